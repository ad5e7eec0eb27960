"""The `omnivec` command line: `omnivec models`, `omnivec demo`, ... (`omnivec --help`). Each
`add_COMMAND` declares a command's arguments; omnivec/commands.py does the work."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from .commands import (
    cmd_data_check,
    cmd_data_shard,
    cmd_demo,
    cmd_embed,
    cmd_evaluate,
    cmd_finetune,
    cmd_index,
    cmd_models,
    cmd_pretrain,
    cmd_search,
    cmd_tokenizer_train,
)
from .pipes import pipes_allowed

Subparsers = Any  # argparse's _SubParsersAction


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def allow_pipe(p: argparse.ArgumentParser) -> None:
    """The flag of the commands that read shard specs."""
    p.add_argument("--allow-pipe", action="store_true", help="let shard specs be pipe: commands (run in a shell)")


def pooling_options(p: argparse.ArgumentParser, pools: list[str], pool_help: str) -> None:
    """`--pool` (one of `pools`) and `--layers`: which vector represents a sample (omnivec/pooling.py)."""
    p.add_argument("--pool", choices=pools, default="mean", help=pool_help)
    p.add_argument(
        "--layers",
        default="last",
        help="the blocks whose tokens are used: last, meanK (the last K averaged) or indices such as 4,8,11 "
        "(averaged: the width stays the backbone's); default last",
    )


def add_models(sub: Subparsers) -> None:
    p = sub.add_parser("models", help="list the registered model variants")
    p.add_argument("--details", action="store_true", help="build each variant and print parameters per part")
    p.set_defaults(func=cmd_models)


def add_demo(sub: Subparsers) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on data/sample, with a report")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a first look in about 3 minutes on 2 cores")
    p.add_argument("--device", default="auto", choices=["auto", "cpu"], help="auto (a GPU if there is one) or cpu")
    p.set_defaults(func=cmd_demo)


def add_recipes(sub: Subparsers) -> None:
    """`omnivec pretrain` and `omnivec finetune`: a YAML config and key=value overrides."""
    recipes = {
        "pretrain": (cmd_pretrain, "masked pretraining of the shared backbone on every modality", "max_steps=200"),
        "finetune": (cmd_finetune, "sequential fine-tuning of task heads on the shared backbone", "init=none"),
    }
    configs = {"pretrain": "pretrain/tiny", "finetune": "finetune/sample_sequential"}
    for name, (func, what, example) in recipes.items():
        config = configs[name]
        p = sub.add_parser(name, help=what)
        p.add_argument("config", help=f"a YAML config, e.g. configs/{config}.yaml")
        p.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example} output_dir=runs/x")
        allow_pipe(p)
        p.set_defaults(func=func)


def add_evaluate(sub: Subparsers) -> None:
    p = sub.add_parser("evaluate", help="evaluate a saved model on the tasks of a fine-tuning config")
    p.add_argument("--model", required=True, help="a saved model folder (finetune: with the tasks' heads)")
    p.add_argument("--config", required=True, help="the fine-tuning config naming the tasks and their data")
    p.add_argument(
        "--protocol",
        choices=["finetune", "knn", "linear", "attentive"],
        default="finetune",
        help="finetune: the model's own heads; knn / linear: weighted k-NN or a linear probe on the "
        "frozen embeddings; attentive: V-JEPA 2's attentive probe on the frozen tokens (saved to "
        "OUTPUT/attentive/TASK); each fitted on the train split (any saved model, no heads needed)",
    )
    p.add_argument(
        "--split", choices=["train", "val", "test"], help="the split to score (default: the config's eval_split)"
    )
    p.add_argument(
        "--output",
        help="folder for metrics.json (finetune, with confusion matrices) or "
        "knn.json / linear.json / attentive.json (default: MODEL/eval)",
    )
    p.add_argument("-k", type=int, default=20, help="knn: neighbours (default 20, DINO)")
    p.add_argument("--temperature", type=float, default=0.07, help="knn: vote temperature (default 0.07, DINO)")
    p.add_argument(
        "--epochs",
        type=int,
        help="linear / attentive: probe epochs on cached features (default 90, MAE; attentive 20, V-JEPA 2)",
    )
    p.add_argument(
        "--lr",
        type=float,
        help="linear: SGD learning rate, cosine schedule (default 0.1); attentive: AdamW (default 1e-3)",
    )
    p.add_argument("--heads", type=int, help="attentive: attention heads of the probe (default: width // 64)")
    pooling_options(
        p, ["mean", "cls"], "knn / linear: pool the tokens by their mean or take the CLS token (default mean)"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    allow_pipe(p)
    p.set_defaults(func=cmd_evaluate)


def add_embed(sub: Subparsers) -> None:
    p = sub.add_parser("embed", help="embed files, folders, manifests, shards or hf: datasets of any modality")
    p.add_argument("--model", required=True, help="a saved model folder or hub id")
    p.add_argument("--input", nargs="+", required=True, help="files, folders, manifests, shards or hf:NAME")
    p.add_argument(
        "--output",
        required=True,
        help="OUT, a folder: OUT/embeddings.json and OUT/part-NNNNN.{npy,jsonl}; the same command again resumes it",
    )
    p.add_argument("--format", default="npy", help="of the parts: npy (default), safetensors or parquet")
    p.add_argument("--part-size", type=int, default=10_000, help="rows per part (default 10000)")
    p.add_argument("--overwrite", action="store_true", help="replace a store OUT holds that another command made")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader workers decoding files")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--skip-bad", action="store_true", help="record unreadable files as failed and go on")
    pooling_options(
        p,
        ["mean", "cls", "attentive"],
        "mean of the tokens (default), the CLS token (a backbone with one), or a trained attentive pooler",
    )
    p.add_argument(
        "--pooler",
        help="--pool attentive: a probe folder omnivec evaluate --protocol attentive wrote (OUTPUT/attentive/TASK)",
    )
    allow_pipe(p)
    p.set_defaults(func=cmd_embed)


def add_search(sub: Subparsers) -> None:
    p = sub.add_parser("search", help="nearest neighbours (cosine) of a file or a text in embedding stores")
    p.add_argument("--index", nargs="+", required=True, help="the OUT given to omnivec embed (several: made alike)")
    p.add_argument("--query", help="a file of any modality")
    p.add_argument("--text", help="a text")
    p.add_argument("-k", type=int, default=5, help="neighbours (default 5)")
    p.add_argument("--modality", help="only return samples of this modality")
    p.add_argument("--model", help="the model that embedded the index (default: the folder the index records)")
    p.set_defaults(func=cmd_search)


def add_index(sub: Subparsers) -> None:
    p = sub.add_parser("index", help="build a FAISS index over an embedding store (needs pip install faiss-cpu)")
    p.add_argument("store", help="the output folder omnivec embed wrote (embeddings.json and its parts)")
    p.add_argument(
        "--kind",
        choices=["flat", "ivf-pq", "hnsw"],
        default="flat",
        help="flat: exact; ivf-pq: clustered product codes, re-ranked exactly; hnsw: a graph (default flat)",
    )
    p.add_argument(
        "--set",
        dest="settings",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="ivf-pq: nlist, m, nbits, nprobe, rerank, train_size; hnsw: M, ef_construction, ef_search "
        "(defaults: omnivec/index.py)",
    )
    p.set_defaults(func=cmd_index)


def add_data(sub: Subparsers) -> None:
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="read every sample of the datasets under PATH and report bad files")
    p.add_argument("path", help="a manifest, a dataset folder, a folder of datasets, shards or hf:NAME[:split]")
    p.add_argument("--allow-outside-root", action="store_true", help="let file paths in the data leave their folder")
    allow_pipe(p)
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("shard", help="write WebDataset tar shards (and index.json) from manifests or folder trees")
    p.add_argument("input", nargs="+", help="manifests, dataset folders or class-per-folder trees")
    p.add_argument("--output", required=True, help="folder for the shards and index.json")
    p.add_argument("--shard-size", default="500MB", help="at most this much per shard (default: 500MB)")
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split (default: every split)")
    p.add_argument("--allow-outside-root", action="store_true", help="let manifest paths leave their folder")
    p.set_defaults(func=cmd_data_shard)


def add_tokenizer(sub: Subparsers) -> None:
    tok = sub.add_parser("tokenizer", help="text tokenizer tools").add_subparsers(dest="tok_command", required=True)
    p = tok.add_parser("train", help="train a WordPiece tokenizer offline from manifests or .txt files")
    p.add_argument("--input", nargs="+", required=True, help="manifests / dataset folders (text, summary) or .txt")
    p.add_argument("--output", required=True, help="folder to save the tokenizer to")
    p.add_argument("--vocab-size", type=positive_int, default=8000, help="word pieces (default 8000)")
    p.add_argument("--split", default="train", help="the split to train on, for manifests with splits (default: train)")
    p.add_argument("--cased", action="store_true", help="keep letter case")
    p.set_defaults(func=cmd_tokenizer_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omnivec",
        description="Masked multimodal pretraining, sequential fine-tuning and embeddings on one shared "
        "transformer backbone. `omnivec COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_models,
        add_demo,
        add_recipes,
        add_evaluate,
        add_embed,
        add_search,
        add_index,
        add_data,
        add_tokenizer,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import exit_status

    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers and os.environ.get("RANK", "0") == "0":  # load reports, once per run
        logging.basicConfig(format="%(message)s")
        logging.getLogger("omnivec").setLevel(logging.INFO)
    try:
        with pipes_allowed(getattr(args, "allow_pipe", False)):
            return exit_status(args.func, args)
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """End a command run under torchrun / `accelerate launch` as torchtune's recipes do, by destroying
    the process group: gloo's threads outliving the interpreter end the process with std::terminate."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
