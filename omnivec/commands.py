"""What each `omnivec` command does, given its parsed arguments (omnivec/cli.py builds the parser)."""

from __future__ import annotations

import argparse
import sys

import torch


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

    from .embedding_inputs import parse_device
    from .errors import ConfigError
    from .evaluation import evaluate_saved
    from .finetune_config import FinetuneConfig
    from .protocols import ProtocolSettings, evaluate_protocol
    from .recipe_config import load_recipe_config

    cfg = load_recipe_config(FinetuneConfig, args.config, args.overrides)
    split, output = args.split or cfg.eval_split, Path(args.output or Path(args.model) / "eval")
    parse_device(args.device)  # a device this machine has, checked before any work
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output}: a file is there; expected a folder for the results")
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
    from .index import build_index
    from .parsing import split_key_value

    entry = build_index(args.store, args.kind, dict(map(split_key_value, args.settings)))
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
    modalities = ", ".join(index["modalities"])
    print(f"wrote {len(index['shards'])} shards ({splits} samples; {modalities}) -> {args.output}/index.json")
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
