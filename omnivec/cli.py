"""The `omnivec` command: `omnivec models`, `omnivec demo`, ... (`omnivec --help`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import torch

from .pipes import pipes_allowed


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_table(model) -> list[tuple[str, int]]:
    """(part, parameters) for every modality encoder, the backbone, each head and the total."""
    rows = [(f"encoder.{name}", count_parameters(enc)) for name, enc in model.encoders.items()]
    rows.append(("backbone", count_parameters(model.backbone)))
    rows += [(f"head.{name}", count_parameters(head)) for name, head in model.heads.items()]
    rows.append(("total", count_parameters(model)))
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    import omnivec

    for name in omnivec.list_models():
        if not args.details:
            print(name)
            continue
        model = omnivec.OmniVecModel(omnivec.model_config(name), load_library_weights=False)  # sizes only
        b = model.config.backbone
        print(f"{name}: backbone dim={b.dim} depth={b.depth} heads={b.num_heads}")
        for part, n in parameter_table(model):
            print(f"  {part:<22} {n / 1e6:>9.2f}M")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.out, quick=args.quick, device=args.device)
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .pretraining import PretrainConfig, pretrain
    from .recipe_config import load_recipe_config

    pretrain(load_recipe_config(PretrainConfig, args.config, args.overrides))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .finetune_config import FinetuneConfig
    from .finetuning import finetune
    from .recipe_config import load_recipe_config

    finetune(load_recipe_config(FinetuneConfig, args.config, args.overrides))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation import evaluate_saved
    from .finetune_config import FinetuneConfig
    from .protocols import ProtocolSettings, evaluate_protocol
    from .recipe_config import load_recipe_config

    cfg = load_recipe_config(FinetuneConfig, args.config, args.overrides)
    split, output = args.split or cfg.eval_split, Path(args.output or Path(args.model) / "eval")
    if args.protocol == "finetune":
        evaluate_saved(args.model, cfg, split, output, args.device)
    else:
        probe = "attentive_" if args.protocol == "attentive" else ""  # --epochs / --lr: the chosen probe's
        given = {f"{probe}epochs": args.epochs, f"{probe}lr": args.lr, "attentive_heads": args.heads}
        settings = ProtocolSettings(
            k=args.k,
            temperature=args.temperature,
            pool=args.pool,
            layers=args.layers,
            **{k: v for k, v in given.items() if v is not None},
        )
        evaluate_protocol(args.model, cfg, args.protocol, split, output, args.device, settings)
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from .embedding_stream import embed_command

    embed_command(
        args.model,
        args.input,
        args.output,
        args.batch_size,
        args.num_workers,
        args.device,
        args.precision,
        args.skip_bad,
        args.format,
        args.part_size,
        args.overwrite,
        pool=args.pool,
        layers=args.layers,
        pooler=args.pooler,
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from .search import search

    hits = search(args.index, args.query, args.text, args.k, model=args.model, modality=args.modality)
    for rank, hit in enumerate(hits, 1):
        print(f"{rank:>2}  {hit['score']:.3f}  {hit['modality']:<12} {hit.get('path') or hit['where']}")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .errors import ConfigError
    from .index import build_index

    overrides = {}
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item!r}: expected key=value")
        overrides[key] = value
    entry = build_index(args.store, args.kind, overrides)
    settings = " ".join(f"{k}={v}" for k, v in entry["settings"].items())
    print(
        f"indexed {entry['count']} vectors ({entry['factory']}{', ' + settings if settings else ''}) in "
        f"{entry['build_seconds']:.1f}s -> {args.store}/{entry['file']}"
    )
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .datasets import check_path, format_report

    reports = check_path(args.path, allow_outside_root=args.allow_outside_root)
    print(format_report(reports))
    return 1 if any(r.bad for r in reports) else 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from .datasets.shard_writer import write_shards

    index = write_shards(args.input, args.output, args.shard_size, args.split, args.allow_outside_root)
    splits = ", ".join(f"{s} {n}" for s, n in index["splits"].items())
    print(
        f"wrote {len(index['shards'])} shards ({splits} samples; {', '.join(index['modalities'])}) "
        f"-> {args.output}/index.json"
    )
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .datasets import load_task
    from .modalities.text import train_tokenizer

    texts: list[str] = []
    for source in args.input:
        if Path(source).suffix == ".txt":
            texts += Path(source).read_text(encoding="utf-8").splitlines()
        else:
            task = load_task(source)
            rows = task.split(args.split) if any("split" in r for r in task.rows) else task.rows
            texts += [r[k] for r in rows for k in ("text", "summary") if k in r]
    if not texts:
        print("error: no text found in the inputs", file=sys.stderr)
        return 1
    tok = train_tokenizer(texts, args.vocab_size, args.output, lowercase=not args.cased)
    print(f"trained a WordPiece tokenizer of {len(tok)} tokens on {len(texts)} texts -> {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnivec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the registered model variants")
    p.add_argument("--details", action="store_true", help="build each variant and print parameters per part")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("demo", help="the whole pipeline on data/sample, with a report")
    p.add_argument("--out", default="runs/demo", help="run folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a first look in about 2 minutes")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one) or cpu")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("pretrain", help="masked pretraining of the shared backbone on every modality")
    p.add_argument("config", help="a YAML config, e.g. configs/pretrain/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=200 output_dir=runs/x")
    p.set_defaults(func=cmd_pretrain)
    p = sub.add_parser("finetune", help="sequential fine-tuning of task heads on the shared backbone")
    p.add_argument("config", help="a YAML config, e.g. configs/finetune/sample_sequential.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. init=none output_dir=runs/x")
    p.set_defaults(func=cmd_finetune)
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
    p.add_argument("--split", help="train, val or test (default: the config's eval_split)")
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
    p.add_argument(
        "--pool",
        choices=["mean", "cls"],
        default="mean",
        help="knn / linear: pool the tokens by their mean or take the CLS token (default mean)",
    )
    p.add_argument(
        "--layers",
        default="last",
        help="the blocks whose tokens are used: last, meanK (the last K averaged) or indices such as 4,8,11 "
        "(averaged); default last",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    p.set_defaults(func=cmd_evaluate)
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
    p.add_argument(
        "--pool",
        choices=["mean", "cls", "attentive"],
        default="mean",
        help="mean of the tokens (default), the CLS token (a backbone with one), or a trained attentive pooler",
    )
    p.add_argument(
        "--layers",
        default="last",
        help="the blocks whose tokens are pooled: last, meanK (the last K averaged) or indices such as 4,8,11 "
        "(averaged: the width stays the backbone's); default last",
    )
    p.add_argument(
        "--pooler",
        help="--pool attentive: a probe folder omnivec evaluate --protocol attentive wrote (OUTPUT/attentive/TASK)",
    )
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("search", help="nearest neighbours (cosine) of a file or a text in embedding stores")
    p.add_argument("--index", nargs="+", required=True, help="the OUT given to omnivec embed (several: made alike)")
    p.add_argument("--query", help="a file of any modality")
    p.add_argument("--text", help="a text")
    p.add_argument("-k", type=int, default=5, help="neighbours (default 5)")
    p.add_argument("--modality", help="only return samples of this modality")
    p.add_argument("--model", help="the model that embedded the index (default: the folder the index records)")
    p.set_defaults(func=cmd_search)
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
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="read every sample of the datasets under PATH and report bad files")
    p.add_argument("path", help="a manifest, a dataset folder, a folder of datasets, shards or hf:NAME[:split]")
    p.add_argument("--allow-outside-root", action="store_true", help="let file paths in the data leave their folder")
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("shard", help="write WebDataset tar shards (and index.json) from manifests or folder trees")
    p.add_argument("input", nargs="+", help="manifests, dataset folders or class-per-folder trees")
    p.add_argument("--output", required=True, help="folder for the shards and index.json")
    p.add_argument("--shard-size", default="500MB", help="at most this much per shard (default: 500MB)")
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split (default: every split)")
    p.add_argument("--allow-outside-root", action="store_true", help="let manifest paths leave their folder")
    p.set_defaults(func=cmd_data_shard)
    for p in [*map(sub.choices.get, ("pretrain", "finetune", "evaluate", "embed")), data.choices["check"]]:
        p.add_argument("--allow-pipe", action="store_true", help="let shard specs be pipe: commands (run in a shell)")
    tok = sub.add_parser("tokenizer", help="text tokenizer tools").add_subparsers(dest="tok_command", required=True)
    p = tok.add_parser("train", help="train a WordPiece tokenizer offline from manifests or .txt files")
    p.add_argument("--input", nargs="+", required=True, help="manifests / dataset folders (text, summary) or .txt")
    p.add_argument("--output", required=True, help="folder to save the tokenizer to")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--split", default="train", help="the split to train on, for manifests with splits (default: train)")
    p.add_argument("--cased", action="store_true", help="keep letter case")
    p.set_defaults(func=cmd_tokenizer_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import exit_status

    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers and os.environ.get("RANK", "0") == "0":  # load reports, once per run
        logging.basicConfig(format="%(message)s")
        logging.getLogger("omnivec").setLevel(logging.INFO)
    with pipes_allowed(getattr(args, "allow_pipe", False)):
        return exit_status(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
