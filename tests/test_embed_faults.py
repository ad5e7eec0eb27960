"""Red-team of issue #27 on embed, search and input decoding: each bad value is a one-line `error:`
(exit 2) naming it and what was expected, and large texts and images are decoded only as far as the
model needs. (The other #27 items on embed and search are in tests/test_embedding_store.py.)"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SAMPLE
from PIL import Image

import omnivec
from omnivec.cli import main
from omnivec.datasets.readers import read_file
from omnivec.errors import DataError, InputError
from omnivec.modalities.image import ImageConfig, ImageTransform
from omnivec.modalities.text import TextConfig, TextTransform


def one_line_error(capsys, *parts: str) -> str:
    """The `error:` line on stderr, checked: one line, starting a line (after any progress bar)."""
    full = capsys.readouterr().err
    at = full.find("error: ")
    err = full[at:]
    assert at == 0 or (at > 0 and full[at - 1] == "\n"), full
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in full, full
    for part in parts:
        assert part in err, err
    return err


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m"
    omnivec.build_model("omnivec_tiny", backbone={"dim": 32, "depth": 1, "num_heads": 2}).save_pretrained(path)
    return path


@pytest.fixture
def digits(tmp_path) -> Path:
    """Three digit images and their manifest."""
    root = tmp_path / "ds"
    rows = [json.loads(line) for line in (SAMPLE / "digits" / "manifest.jsonl").read_text().splitlines()[:3]]
    for row in rows:
        (root / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / "digits" / row["path"], root / row["path"])
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def embed(model_dir: Path, inputs, out: Path, *extra: str) -> int:
    args = ["embed", "--model", str(model_dir), "--input", *map(str, inputs), "--output", str(out)]
    return main(args + ["--num-workers", "0", "--device", "cpu", *extra])


def test_an_output_among_the_files_a_manifest_names_is_refused(model_dir, digits, tmp_path, capsys):
    """#27 item 2: an output that is, or holds, the files a manifest input names."""
    manifest = digits / "manifest.jsonl"
    image = digits / json.loads(manifest.read_text().splitlines()[0])["path"]
    before = {p: p.read_bytes() for p in digits.rglob("*") if p.is_file()}
    for output, extra in ((image.parent, ()), (image.parent, ("--overwrite",)), (image, ())):
        assert embed(model_dir, [manifest], output, *extra) == 2
        one_line_error(capsys, f"--output {output}: ")
    assert {p: p.read_bytes() for p in digits.rglob("*") if p.is_file()} == before


def test_one_input_given_twice_is_refused(model_dir, digits, tmp_path, capsys):
    """#27 item 14 (embed): `--input X X/../X` embedded every sample twice, exit 0."""
    manifest = digits / "manifest.jsonl"
    image = digits / json.loads(manifest.read_text().splitlines()[0])["path"]
    for inputs, held in (
        ([digits, digits], manifest),
        ([digits, tmp_path / "ds" / ".." / "ds"], tmp_path / "ds" / ".." / "ds" / "manifest.jsonl"),
        ([digits, manifest], manifest),
        ([image.parent, image], image),
        ([image, image.parent], image),
    ):
        assert embed(model_dir, inputs, tmp_path / "o") == 2
        one_line_error(capsys, f"error: inputs: '{inputs[0]}' and '{inputs[1]}' both hold {held}; give each input once")
        assert not (tmp_path / "o" / "embeddings.json").exists()


@pytest.mark.parametrize(
    "damage, expected",
    [
        (os.urandom(300), "the magic string is not correct; expected b'\\x93NUMPY'"),
        (b"", "EOF: reading magic string"),
        (np.lib.format.magic(1, 0) + b"\x00" * 10, "not a readable npy part"),
    ],
)
def test_a_garbage_npy_part_is_named_in_one_line(model_dir, digits, tmp_path, capsys, damage, expected):
    """#27 item 20: a .npy part that is not one gave numpy's pickle ValueError as a traceback, and
    random bytes were then called "pickled (object) data"."""
    out = tmp_path / "store"
    assert embed(model_dir, [digits], out) == 0
    (out / "part-00000.npy").write_bytes(damage)
    capsys.readouterr()
    assert main(["search", "--index", str(out), "--text", "a digit"]) == 2
    one_line_error(capsys, f"error: {out / 'part-00000.npy'}: not a readable npy part", expected)


def test_an_empty_saved_hf_dataset_is_named(model_dir, tmp_path, capsys):
    """#27 item 23: an empty `save_to_disk` dataset (or split) gave `datasets`' IndexError."""
    import datasets

    datasets.Dataset.from_dict({"text": [], "label": []}).save_to_disk(str(tmp_path / "empty"))
    splits = {"train": datasets.Dataset.from_dict({"text": ["a"]}), "test": datasets.Dataset.from_dict({"text": []})}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dict"))
    capsys.readouterr()
    empty, split = f"hf:{tmp_path / 'empty'}", f"hf:{tmp_path / 'dict'}"
    assert main(["data", "check", empty]) == 2
    one_line_error(capsys, f"error: {empty}: the dataset was saved without rows, and `datasets` cannot load")
    assert embed(model_dir, [empty], tmp_path / "o") == 2
    one_line_error(capsys, f"error: {empty}: the dataset was saved without rows")
    assert main(["data", "check", split]) == 2
    one_line_error(capsys, f"error: {split}: split 'test' was saved without rows", "(or leave that split out)")


def test_a_class_label_id_out_of_range_is_named(model_dir, tmp_path, capsys):
    """#27 item 23: a ClassLabel id past the class names indexed the names list (IndexError)."""
    import datasets

    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 5]})
    ds.cast_column("label", datasets.ClassLabel(names=["x", "y"])).save_to_disk(str(tmp_path / "hf"))
    capsys.readouterr()
    spec = f"hf:{tmp_path / 'hf'}"
    assert main(["data", "check", spec]) == 1
    assert f"BAD {spec}[train][1]: label is 5, but the column's ClassLabel has 2 classes" in capsys.readouterr().out
    assert embed(model_dir, [spec], tmp_path / "o") == 2  # a bad sample, listed as a shard's bad samples are
    err = capsys.readouterr().err
    assert "error: 1 samples could not be embedded" in err and "Traceback" not in err
    assert f"\n  {spec}[train][1]: label is 5, but the column's ClassLabel has 2 classes\n" in err


def test_a_shard_size_past_any_number_is_refused(digits, tmp_path, capsys):
    """#27 item 24: `--shard-size 1e400` raised OverflowError."""
    assert main(["data", "shard", str(digits), "--output", str(tmp_path / "s"), "--shard-size", "1e400"]) == 2
    one_line_error(capsys, "error: shard size: expected a positive size such as 500MB or 2GB, got '1e400'")


@pytest.mark.parametrize(
    "image",
    [
        torch.zeros(3, 0, 0, dtype=torch.uint8),
        torch.zeros(3, 5, 0, dtype=torch.uint8),
        torch.zeros(0, 5, 5, dtype=torch.uint8),
        torch.zeros(4, 5, 5, dtype=torch.uint8),
        torch.zeros(1, 3, 5, 5, dtype=torch.uint8),
        Image.new("RGB", (0, 0)),
    ],
    ids=["0x0", "5x0", "no-channels", "4-channels", "batch", "pil-0x0"],
)
@pytest.mark.parametrize("train", [False, True])
def test_the_image_transform_refuses_an_image_without_pixels(image, train):
    """#27 item 24: a 0x0 tensor raised ZeroDivisionError in the resize."""
    transform = ImageTransform(ImageConfig(image_size=32, patch_size=8), train=train)
    shape = list(image.shape) if isinstance(image, torch.Tensor) else [0, 0]
    with pytest.raises(InputError, match=rf"image: expected \[C, H, W\] with C 1 or 3 .* got shape \{shape}"):
        transform(image)
    assert transform(torch.zeros(1, 5, 7, dtype=torch.uint8)).shape == (3, 32, 32)


def gradient(size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], -1).astype(np.uint8)  # [H, W, 3]


def test_a_large_jpeg_is_decoded_reduced_near_the_model_input(tmp_path):
    """#27 item 19: a JPEG is reduced on load (Image.draft) while both sides stay >= 1024, and the
    model sees nearly the same input as from the full decode."""
    Image.fromarray(gradient(2048)).save(tmp_path / "big.jpg", quality=95)
    image = read_file(tmp_path / "big.jpg")
    assert image.size == (1024, 1024) and image.mode == "RGB"
    with Image.open(tmp_path / "big.jpg") as full:
        full.load()
        transform = ImageTransform(ImageConfig())
        assert torch.allclose(transform(image), transform(full), atol=0.05)
    Image.fromarray(gradient(1500)).save(tmp_path / "mid.jpg")
    assert read_file(tmp_path / "mid.jpg").size == (1500, 1500)  # halving would go under 1024


def test_an_image_over_the_pixel_bound_is_named_before_it_is_decoded(tmp_path, monkeypatch):
    """#27 item 19: images under Pillow's 178 M-pixel limit decoded in full (13000^2 RGBA: 3 GB);
    the bound (OMNIVEC_MAX_IMAGE_PIXELS, default 8192^2) counts the pixels after a JPEG's reduction."""
    Image.fromarray(gradient(1200)).save(tmp_path / "a.png")
    Image.fromarray(gradient(2048)).save(tmp_path / "b.jpg")
    monkeypatch.setenv("OMNIVEC_MAX_IMAGE_PIXELS", "1100000")
    with pytest.raises(DataError) as e:
        read_file(tmp_path / "a.png")
    assert str(e.value) == (
        f"{tmp_path / 'a.png'}: a 1200x1200 image (1.4 M pixels) is over the bound of 1100000 pixels "
        "(set OMNIVEC_MAX_IMAGE_PIXELS to raise it; default 67108864)"
    )
    assert read_file(tmp_path / "b.jpg").size == (1024, 1024)  # 1.05 M pixels once reduced
    monkeypatch.setenv("OMNIVEC_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(DataError, match="OMNIVEC_MAX_IMAGE_PIXELS='lots': expected a whole number of pixels >= 1"):
        read_file(tmp_path / "b.jpg")
    monkeypatch.delenv("OMNIVEC_MAX_IMAGE_PIXELS")
    assert read_file(tmp_path / "a.png").size == (1200, 1200)


def test_a_long_word_is_cut_without_changing_the_tokens_of_a_short_max_length(monkeypatch):
    """#27 item 18: the text was cut at max_length * 16 characters; for max_length 4 that cut a
    1200-character word (one [UNK] to WordPiece) into word pieces."""
    text = ("ab" * 600 + " ") * 100  # 120 KB, no space in the first 1200 characters
    transform = TextTransform(TextConfig(tokenizer=str(SAMPLE / "tokenizer"), vocab_size=8000, max_length=4))
    whole = transform.tokenizer(text, truncation=True, max_length=4, return_tensors="pt")["input_ids"][0]
    seen = []
    real = type(transform.tokenizer).__call__
    monkeypatch.setattr(
        type(transform.tokenizer), "__call__", lambda self, t, **kw: seen.append(len(t)) or real(self, t, **kw)
    )
    assert torch.equal(transform(text)["input_ids"], whole) and len(whole) == 4
    assert max(seen) <= 4 * 1024, seen


@pytest.mark.parametrize("fmt", ["npy", "safetensors", "parquet"])
def test_a_rerun_embeds_a_truncated_part_again(model_dir, digits, tmp_path, fmt):
    """A part cut short after it was written (a full disk, a bad copy) used to count as done on a
    rerun; now the rerun names it, embeds it again and ends with the store it first wrote."""
    out, options = tmp_path / "store", ["--part-size", "1", "--format", fmt]
    assert embed(model_dir, [digits], out, *options) == 0
    first = {p.name: p.read_bytes() for p in out.glob("part-*")}
    damaged, records = out / f"part-00001.{fmt}", out / "part-00002.jsonl"
    damaged.write_bytes(damaged.read_bytes()[:-20])
    records.write_text("")
    with pytest.warns(UserWarning) as warned:
        assert embed(model_dir, [digits], out, *options) == 0
    messages = [str(w.message) for w in warned]
    assert any(f"{damaged}: not a readable {fmt} part" in m and "embedding part 1 again" in m for m in messages)
    expected = f"part-00002.{fmt}: holds [1, 32] embeddings and 0 records, 1 of each expected; embedding part 2 again"
    assert any(expected in m for m in messages), messages
    assert {p.name: p.read_bytes() for p in out.glob("part-*")} == first
