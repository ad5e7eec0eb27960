"""The `omnivec` command: `omnivec models`, `omnivec demo`, ... (`omnivec --help`)."""
from __future__ import annotations

import argparse
import sys
import time

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
        model = omnivec.build_model(name)
        b = model.config.backbone
        print(f"{name}: backbone dim={b.dim} depth={b.depth} heads={b.num_heads}")
        for part, n in parameter_table(model):
            print(f"  {part:<22} {n / 1e6:>9.2f}M")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import omnivec

    print("omnivec demo: the full pipeline demo is not built yet; this runs one forward pass of "
          "omnivec_tiny over a random batch of every modality.")
    torch.manual_seed(0)
    model = omnivec.build_model("omnivec_tiny").eval()
    batch = omnivec.example_inputs(model.config, batch_size=args.batch_size)
    start = time.perf_counter()
    with torch.inference_mode():
        embeddings = model.embed(batch)
    elapsed = time.perf_counter() - start
    for modality, emb in embeddings.items():
        print(f"  {modality:<12} input {_describe(batch[modality])} -> embedding {list(emb.shape)}")
    print(f"done: {len(embeddings)} modalities embedded in {elapsed:.2f}s "
          f"({count_parameters(model) / 1e6:.2f}M parameters)")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .config import load_recipe_config
    from .pretraining import PretrainConfig, pretrain

    pretrain(load_recipe_config(PretrainConfig, args.config, args.overrides))
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from .datasets import check_path, format_report
    from .errors import DataError

    try:
        reports = check_path(args.path, allow_outside_root=args.allow_outside_root)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(format_report(reports))
    return 1 if any(r.bad for r in reports) else 0


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


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return str(list(x.shape))
    return "{" + ", ".join(f"{k}: {list(v.shape)}" for k, v in x.items()) + "}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnivec", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the registered model variants")
    p.add_argument("--details", action="store_true", help="build each variant and print parameters per part")
    p.set_defaults(func=cmd_models)
    p = sub.add_parser("demo", help="run the demo")
    p.add_argument("--batch-size", type=int, default=2)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("pretrain", help="masked pretraining of the shared backbone on every modality")
    p.add_argument("config", help="a YAML config, e.g. configs/pretrain/tiny.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. max_steps=200 output_dir=runs/x")
    p.set_defaults(func=cmd_pretrain)
    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("check", help="read every sample of the datasets under PATH and report bad files")
    p.add_argument("path", help="a manifest, a dataset folder, or a folder of datasets")
    p.add_argument("--allow-outside-root", action="store_true", help="let manifest paths leave their folder")
    p.set_defaults(func=cmd_data_check)
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
    from .errors import ConfigError, DataError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
