"""Data inputs stay where the user put them (issue #27): index.json shard files and `hf:` path
cells stay in their dataset's folder, `pipe:` specs run only with `--allow-pipe` on the command
line, one dataset given twice is refused, brace patterns are counted before they are expanded, and
an existing path is read as it is, braces and all."""

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import digits_with_bad_files, pretrain_yaml

from omnivec import DataError
from omnivec.cli import main
from omnivec.datasets import find_tasks, load_task
from omnivec.datasets.check import check_path, format_report
from omnivec.datasets.hf import sample_cell
from omnivec.datasets.patterns import expand_pattern
from omnivec.datasets.shard_writer import write_shards
from omnivec.embedding_inputs import input_units, unit_items


@pytest.fixture
def shards(tmp_path) -> Path:
    """Eight digits written as shards (about two per shard), in tmp_path/shards."""
    write_shards([digits_with_bad_files(tmp_path, [])], tmp_path / "shards", "3kB")
    return tmp_path / "shards"


def point_index_at(shards: Path, file: str) -> None:
    """Make the index's first shard entry name `file` instead."""
    index = json.loads((shards / "index.json").read_text())
    index["shards"][0]["file"] = file
    (shards / "index.json").write_text(json.dumps(index))


def test_index_shard_files_stay_in_the_index_folder(tmp_path, shards, capsys):
    (tmp_path / "x").mkdir()
    first = json.loads((shards / "index.json").read_text())["shards"][0]["file"]
    secret = shutil.copy(shards / first, tmp_path / "x" / "secret.tar")
    for file in ["../x/secret.tar", str(secret)]:
        point_index_at(shards, file)
        with pytest.raises(DataError, match=re.escape(f"index.json: shard file '{file}' leaves the dataset folder")):
            find_tasks(shards)
        assert main(["data", "check", str(shards)]) == 2
        assert capsys.readouterr().err.startswith(f"error: {shards / 'index.json'}: shard file '{file}' leaves")
        assert main(["data", "check", str(shards), "--allow-outside-root"]) == 0  # the user's say-so
        assert "8 samples, 0 bad" in capsys.readouterr().out


def test_an_index_entry_is_a_file_never_a_command(tmp_path, shards, monkeypatch):
    monkeypatch.chdir(shards)  # the index's folder is "."
    point_index_at(shards, "pipe:touch ran")
    assert "cannot open this shard" in format_report(check_path("."))
    assert not (shards / "ran").exists()


def test_hf_path_cells_stay_in_the_dataset_folder(tmp_path, capsys):
    import datasets

    (tmp_path / "x").mkdir()
    private = Path(shutil.copy(digits_with_bad_files(tmp_path, []) / "images" / "0000.png", tmp_path / "x"))
    data = tmp_path / "hf"
    (data / "images").mkdir(parents=True)
    shutil.copy(private, data / "images" / "0000.png")
    datasets.Dataset.from_dict({"image": ["images/0000.png", "../x/0000.png", str(private)]}).save_to_disk(str(data))
    (task,) = find_tasks(f"hf:{data}")
    rows = [row for _, row in task.stream.shards[0].read()]  # a bad cell is an error row, as a shard's sample is
    assert rows[0]["path"] == (data / "images" / "0000.png").resolve()
    assert re.search(r"\[train\]\[1\]: path '../x/0000.png' leaves the dataset folder", rows[1]["error"])
    assert "path" not in rows[1] and "path" not in rows[2] and "leaves the dataset folder" in rows[2]["error"]
    assert main(["data", "check", f"hf:{data}"]) == 1  # reported, as a manifest's bad rows are
    assert "path '../x/0000.png' leaves the dataset folder" in capsys.readouterr().out
    (task,) = find_tasks(f"hf:{data}", allow_outside_root=True)
    assert [r["path"] for _, r in task.stream.shards[0].read()][1:] == [private.resolve()] * 2
    # an absolute path, a parquet file's neighbours, a hub dataset (no folder at all)
    with pytest.raises(DataError, match=re.escape(f"[2]: path '{private}' leaves the dataset folder {data}")):
        sample_cell("hf:x[train][2]", str(private), "image", data, False)
    datasets.Dataset.from_dict({"image": ["../x/0000.png"]}).to_parquet(str(data / "p.parquet"))
    (task,) = find_tasks(f"hf:{data / 'p.parquet'}")
    ((_, row),) = task.stream.shards[0].read()
    assert f"path '../x/0000.png' leaves the dataset folder {data}" in row["error"]
    with pytest.raises(DataError, match=r"hf:user/set\[train\]\[0\]: path 'a.png': a hub dataset has no folder"):
        sample_cell("hf:user/set[train][0]", "a.png", "image", None, False)


def test_a_bad_hf_cell_is_one_bad_sample_and_the_rows_after_it_are_read(tmp_path):
    """A cell leaving the folder or an out-of-range label ended its 1,000-row slice: `data check`
    never read the rows after it, and `embed --skip-bad` recorded every row of the slice as failed
    with the first bad row's error."""
    import datasets

    data = tmp_path / "hf"
    (data / "images").mkdir(parents=True)
    shutil.copy(digits_with_bad_files(tmp_path, []) / "images" / "0000.png", data / "images" / "0000.png")
    cells = ["../x/0000.png", "images/0000.png", "/etc/hostname", "images/0000.png"]
    ds = datasets.Dataset.from_dict({"image": cells, "label": [0, 1, 0, 7]})
    ds.cast_column("label", datasets.ClassLabel(names=["a", "b"])).save_to_disk(str(data))
    spec = f"hf:{data}"
    (report,) = check_path(spec)
    assert [line.split(": ")[0] for line in report.bad] == [f"{spec}[train][{i}]" for i in (0, 2, 3)]
    assert "label is 7, but the column's ClassLabel has 2 classes" in report.bad[2]
    assert format_report([report]).endswith("1 datasets, 4 samples, 3 bad")
    (unit,) = input_units(spec)  # omnivec embed's reading, with --skip-bad
    items = list(unit_items(unit, skip_bad=True))
    assert ["error" in item for item in items] == [True, False, True, True]
    assert [item["where"] for item in items if "error" in item] == [f"{spec}[train][{i}]" for i in (0, 2, 3)]
    assert items[1]["path"] == str((data / "images" / "0000.png").resolve()) and items[1]["label"] == "b"


def test_pipe_specs_run_only_with_allow_pipe_on_the_command_line(tmp_path, shards, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for spec in ["pipe:touch ran", f"{shards}/val-image-000000.tar::pipe:touch ran", "{a,pipe:touch ran}"]:
        with pytest.raises(DataError, match="'?pipe:touch ran'?: a pipe: spec runs a shell command; to run it, add"):
            find_tasks(spec)
        assert main(["data", "check", spec]) == 2
        assert "add --allow-pipe to the omnivec command line" in capsys.readouterr().err
    config = pretrain_yaml(tmp_path, "run", data={"image": ["pipe:touch ran"]})
    assert main(["pretrain", str(config)]) == 2
    assert capsys.readouterr().err == (
        "error: pipe:touch ran: a pipe: spec runs a shell command; to run it, add --allow-pipe to the omnivec "
        "command line (a config file cannot allow it)\n"
    )
    assert main(["data", "shard", "pipe:touch ran", "--output", "out"]) == 2
    assert capsys.readouterr().err == "error: pipe:touch ran: already sharded\n"
    assert not (tmp_path / "ran").exists()
    first = json.loads((shards / "index.json").read_text())["shards"][0]
    assert main(["data", "check", f"pipe:cat {shards / first['file']}", "--allow-pipe"]) == 0
    assert f"{first['samples']} samples, 0 bad" in capsys.readouterr().out
    with pytest.raises(DataError, match="add --allow-pipe"):  # the opt-in ended with its command
        find_tasks(f"pipe:cat {shards / first['file']}")


def test_one_dataset_given_twice_is_refused(tmp_path, shards, capsys):
    data = tmp_path / "digits"
    manifest = data / "manifest.jsonl"
    for inputs in [
        [data, data, data],
        [data, tmp_path / "digits" / ".." / "digits"],
        [data, manifest],
        [tmp_path, data],
    ]:
        with pytest.raises(
            DataError, match=re.escape(f"inputs: '{inputs[0]}' and '{inputs[1]}' both hold {manifest};")
        ):
            write_shards(inputs, tmp_path / "out")
    assert main(["data", "shard", str(data), f"{data}/../digits", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (
        f"error: inputs: '{data}' and '{data}/../digits' both hold {manifest}; give each dataset once\n"
    )
    config = pretrain_yaml(
        tmp_path, "run", data={"image": [str(shards), f"{shards}/train-image-{{000000..000001}}.tar"]}
    )
    assert main(["pretrain", str(config)]) == 2
    assert f"error: data.image: '{shards}' and " in capsys.readouterr().err
    assert len(write_shards([data], tmp_path / "out")["shards"]) > 0  # once is fine


def test_label_spellings_are_one_class(tmp_path):
    rows = [{"text": "a", "label": v} for v in [1, "1", 1.0, True, "true"]]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "manifest.csv").write_text("text,label\na,1\nb,true\n")
    for source in [tmp_path / "manifest.jsonl", tmp_path / "c"]:
        task = load_task(source)
        assert task.classes == ["1", "true"]
    assert [r["label"] for r in load_task(tmp_path).rows] == ["1", "1", "1", "true", "true"]


def test_brace_patterns_are_counted_before_they_are_expanded(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"x-\{0000000..1999999\}.tar: names 2,000,000 shards, more than the 1,000,000"):
        find_tasks(f"{tmp_path}/x-{{0000000..1999999}}.tar")
    with pytest.raises(DataError, match=r"names 1,000,000,000 shards"):
        expand_pattern("x-{000000000..999999999}.tar")
    with pytest.raises(
        DataError, match=r"^a.tar::b-\{0..9\}\{0..9\}\{0..9\}\{0..9\}\{0..9\}\{0..9\}: names 1,000,001 "
    ):
        expand_pattern("a.tar::b-{0..9}{0..9}{0..9}{0..9}{0..9}{0..9}")
    assert expand_pattern("s-{00..02}.tar::t-{a,b{1..2..1}}.tar") == [
        "s-00.tar", "s-01.tar", "s-02.tar", "t-a.tar", "t-b1.tar", "t-b2.tar"
    ]  # fmt: skip
    with pytest.raises(DataError, match=r"unbalanced braces in '.*/x-\{a,b\}\}.tar'"):
        find_tasks(f"{tmp_path}/x-{{a,b}}}}.tar")
    monkeypatch.delenv("WDS_PART", raising=False)
    with pytest.raises(DataError, match=r"\$\{PART\} needs the environment variable WDS_PART, which is not set"):
        find_tasks(f"{tmp_path}/x-${{PART}}.tar")


def test_an_existing_path_with_braces_is_that_path(tmp_path, shards):
    data = tmp_path / "digits"
    literal = tmp_path / "set{1,2}"
    shutil.copytree(data, literal)
    (task,) = find_tasks(literal)
    assert len(task.rows) == 8 and task.source == literal / "manifest.jsonl"
    tar = shutil.copy(shards / "train-image-000000.tar", tmp_path / "shard{0..1}.tar")
    (task,) = find_tasks(tar)
    assert [s.name for s in task.stream.shards] == [str(tar)] and len(list(task.stream.shards[0].read())) > 0
