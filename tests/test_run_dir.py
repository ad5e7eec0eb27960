"""The run folder (omnivec/run_dir.py): never replaced without a word, resumed only by the same
config, cleaned by overwrite of the run's own outputs only, checked writable before any work."""

import json
import os
import shutil

import pytest
from helpers import (
    SAMPLE,
    fake_run,
    folder_bytes,
    logged_steps,
    pretrain_yaml,
)

import omnivec
from omnivec import ConfigError
from omnivec.pretraining import PretrainConfig, pretrain
from omnivec.recipe_config import load_recipe_config


def test_a_run_folder_is_not_replaced_without_a_word(tmp_path):
    """Item 1: another run's folder is refused before any work unless resume=auto with the same
    config (max_steps may change) or overwrite=true; nothing in it changes when refused."""
    config = pretrain_yaml(tmp_path, "run", max_steps=2, save_every=0)
    pretrain(load_recipe_config(PretrainConfig, config))
    run = tmp_path / "run"
    before = folder_bytes(run)
    with pytest.raises(
        ConfigError, match=rf"output_dir: {run} already holds a run \(model, checkpoints, metrics.jsonl"
    ):
        pretrain(load_recipe_config(PretrainConfig, config))
    with pytest.raises(ConfigError, match=r"holds a run of another config \(decoder.dim: 32 there, 16 now\)"):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto", "decoder.dim=16", "decoder.num_heads=2"]))
    with pytest.raises(ConfigError, match=r"^overwrite: expected false when resume is set"):
        load_recipe_config(PretrainConfig, config, ["resume=auto", "overwrite=true"])
    assert folder_bytes(run) == before
    summary = pretrain(
        load_recipe_config(PretrainConfig, config, ["resume=auto", "max_steps=3"])
    )  # the same run, longer
    assert summary["steps"] == 3 and logged_steps(run) == [1, 2, 3]


def test_resume_auto_over_a_fine_tuned_run_is_refused(tmp_path):
    """Item 1, the reported case: pretraining with resume=auto into a fine-tuning run's folder,
    with its run_config.json or from before there was one."""
    config = pretrain_yaml(tmp_path, "ft", max_steps=2)
    ft = tmp_path / "ft"
    before = fake_run(
        ft,
        **{
            "model/config.json": "{}",
            "eval.json": "{}",
            "stages/1_digits/done.json": "{}",
            "run_config.json": json.dumps({"recipe": "finetune", "config": {}}),
        },
    )
    with pytest.raises(
        ConfigError, match=rf"output_dir: {ft} holds a finetune run; this pretrain run cannot resume it"
    ):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    (ft / "run_config.json").unlink()
    with pytest.raises(
        ConfigError,
        match=r"holds a run \(model, stages, eval.json\) with no run_config.json and no "
        r"checkpoint to resume from",
    ):
        pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    before.pop("run_config.json")
    assert folder_bytes(ft) == before


def test_overwrite_removes_the_old_runs_outputs_only(tmp_path):
    """Item 1: overwrite=true leaves no stale tokenizer, eval.json or checkpoint of the old run,
    and no old metrics; files that are not run outputs stay."""
    run = tmp_path / "run"
    fake_run(
        run,
        **{
            "model/tokenizer/stale.txt": "old",
            "eval.json": "{}",
            "metrics.jsonl": '{"step": 0, "val/x": 1}\n',
            "checkpoints/step_00000009/trainer_state.json": "{}",
            "notes.txt": "mine",
        },
    )
    pretrain(
        load_recipe_config(
            PretrainConfig, pretrain_yaml(tmp_path, "run", max_steps=1, save_every=0), ["overwrite=true"]
        )
    )
    assert not (run / "model" / "tokenizer" / "stale.txt").exists() and not (run / "eval.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000001"]
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 1]
    assert (run / "notes.txt").read_text() == "mine"
    saved = json.loads((run / "run_config.json").read_text())
    assert saved["recipe"] == "pretrain" and saved["config"]["max_steps"] == 1
    omnivec.OmniVecModel.from_pretrained(run / "model")


def test_resume_drops_the_records_logged_after_the_last_checkpoint(tmp_path):
    """Item 1: a run killed after logging steps past its last checkpoint logs them once when resumed."""
    config = pretrain_yaml(tmp_path, "run", max_steps=4, save_every=2)
    pretrain(load_recipe_config(PretrainConfig, config))
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    shutil.rmtree(run / "model")  # as if killed after logging step 4, before its checkpoint
    pretrain(load_recipe_config(PretrainConfig, config, ["resume=auto"]))
    assert logged_steps(run) == [1, 2, 3, 4]


@pytest.mark.parametrize("case", ["file", "under_a_file", "read_only"])
def test_an_output_dir_that_cannot_be_written_fails_before_any_work(tmp_path, monkeypatch, case):
    """Item 10: checked before the model is built (a file, a folder under a file, a read-only folder)."""
    import omnivec.pretraining
    import omnivec.run_dir

    if case == "read_only" and os.geteuid() == 0:  # root writes into read-only folders: refuse as the OS would

        def read_only(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(dir))

        monkeypatch.setattr(omnivec.run_dir.tempfile, "TemporaryFile", read_only)
    target = {"file": tmp_path / "taken", "under_a_file": tmp_path / "taken" / "run", "read_only": tmp_path / "ro"}[
        case
    ]
    (tmp_path / "taken").write_text("a file")
    (tmp_path / "ro").mkdir(mode=0o555)
    monkeypatch.setattr(omnivec.pretraining, "build_model_for", lambda cfg: pytest.fail("the model was built"))
    cfg = load_recipe_config(PretrainConfig, pretrain_yaml(tmp_path, "run"), [f"output_dir={target}"])
    with pytest.raises(ConfigError, match=rf"^output_dir: {target} is a file|^output_dir: cannot write in {target} "):
        pretrain(cfg)


def test_overwrite_keeps_the_old_run_when_the_new_configs_data_is_not_found(tmp_path):
    """overwrite=true removes the old run only once every dataset of the new config is found (pretrain:
    `data`; finetune: each task's data and splits): a typo in a path loses no work."""
    from omnivec.errors import DataError
    from omnivec.finetune_config import FinetuneConfig
    from omnivec.finetuning import finetune
    from omnivec.parsing import from_dict

    run = tmp_path / "run"
    before = fake_run(run, **{"model/config.json": "{}", "metrics.jsonl": "{}\n", "eval.json": "{}"})
    missing = tmp_path / "no-such-dataset"
    config = pretrain_yaml(tmp_path, "run", max_steps=1)
    with pytest.raises((ConfigError, DataError), match=str(missing)):
        pretrain(load_recipe_config(PretrainConfig, config, ["overwrite=true", f"data.image=[{missing}]"]))
    tasks = {"digits": {"head": "classification", "data": [str(missing)]}}
    cfg = {"tasks": tasks, "stages": [{"tasks": ["digits"]}], "output_dir": str(run), "overwrite": True}
    with pytest.raises((ConfigError, DataError), match=str(missing)):
        finetune(from_dict(FinetuneConfig, cfg, ""))
    gappy = tmp_path / "gappy"  # found, but one row's file is gone
    shutil.copytree(SAMPLE / "digits", gappy)
    rows = [json.loads(line) for line in (gappy / "manifest.jsonl").read_text().splitlines()]
    gone = gappy / next(r["path"] for r in rows if r["split"] == "train")
    gone.unlink()
    with pytest.raises(DataError, match=rf"data.image: 1 of the .* samples name a file that is not there: .*{gone}"):
        pretrain(load_recipe_config(PretrainConfig, config, ["overwrite=true", f"data.image=[{gappy}]"]))
    cfg["tasks"]["digits"]["data"] = [str(gappy)]
    with pytest.raises(DataError, match=rf"tasks.digits.data: 1 of the .* samples in split 'train' .*{gone}"):
        finetune(from_dict(FinetuneConfig, cfg, ""))
    assert folder_bytes(run) == before


def test_demo_and_evaluate_refuse_a_device_or_output_before_any_work(tmp_path, capsys):
    from omnivec.cli import main
    from omnivec.demo import run_demo

    with pytest.raises(ConfigError, match=r"demo --device: expected auto \(a GPU if there is one\) or cpu, got 'gpu'"):
        run_demo(tmp_path / "demo", device="gpu")
    assert not (tmp_path / "demo").exists()
    (tmp_path / "file").write_text("mine")
    evaluate = ["evaluate", "--model", str(tmp_path / "model"), "--config", "configs/finetune/sample_sequential.yaml"]
    assert main([*evaluate, "--device", "gpu"]) != 0
    assert "--device: expected auto, cpu, cuda, cuda:N or mps, got 'gpu'" in capsys.readouterr().err
    assert main([*evaluate, "--output", str(tmp_path / "file")]) != 0
    assert f"--output {tmp_path / 'file'}: a file is there; expected a folder" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "mine"
