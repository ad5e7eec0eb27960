"""`omnivec demo`: the whole pipeline on data/sample with omnivec_tiny, and a report.

1. masked pretraining on all five modalities; 2. sequential fine-tuning of every sample task from
the pretrained backbone; 3. the same from scratch; 4. few labels: each classification task
fine-tuned on 5% of its training labels from the pretrained backbone and from scratch, 3 seeds;
5. evaluation on the test splits (confusion matrices); 6. embeddings of test samples, a 2-D
projection and a retrieval example; 7. report.md and report.html (images inline)."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]  # a clone of the repository: configs/ and data/sample/


def _root() -> Path:
    for root in (Path.cwd(), ROOT):
        if (root / "data" / "sample").is_dir() and (root / "configs").is_dir():
            return root
    raise FileNotFoundError("omnivec demo needs the repository's data/sample/ and configs/: run it from a clone")


PRETRAIN_STEPS = {False: 200, True: 20}  # of configs/pretrain/tiny.yaml's 1000 (key: --quick)
FINETUNE_SCALE = {False: 0.3, True: 0.03}  # share of the fine-tuning config's steps the demo runs (key: --quick)
# The few-label comparison: this share of each classification task's training labels, these seeds,
# and the steps per run (key: --quick).
LOW_LABEL = {"fraction": 0.05, "seeds": {False: (0, 1, 2), True: (0, 1)}, "steps": {False: 40, True: 2}}


def _scaled_stages(stages: list, scale: float) -> list:
    return [dataclasses.replace(s, steps=max(2, round(s.steps * scale))) for s in stages]


def run_demo(out: str | Path = "runs/demo", quick: bool = False, device: str = "auto") -> Path:
    """Run every stage into `out` and write `out/report.md` and `out/report.html`; returns the html path."""
    from .config import load_recipe_config
    from .evaluation import evaluate_saved
    from .finetuning import finetune
    from .pretraining import PretrainConfig, pretrain
    from .tasks import FinetuneConfig

    root, out = _root(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cpu" if device == "cpu" else "auto"
    timings: dict[str, float] = {}
    steps = 7

    def stage(i: int, name: str) -> float:
        tqdm.write(f"[{i}/{steps}] {name}")
        return time.perf_counter()

    t = stage(1, "masked pretraining on all five modalities")
    overrides = [
        f"max_steps={PRETRAIN_STEPS[quick]}",
        *(["eval_batches=2", "eval_every=0"] if quick else ["eval_every=100"]),
    ]
    pre_cfg = load_recipe_config(
        PretrainConfig,
        root / "configs/pretrain/tiny.yaml",
        [f"output_dir={out / 'pretrain'}", f"device={dev}", "save_every=0", "overwrite=true", *overrides],
    )
    pre_cfg.data = {m: [str(root / p) for p in paths] for m, paths in pre_cfg.data.items()}
    _absolute_tokenizer(pre_cfg, root)
    pretrain(pre_cfg)
    timings["pretraining"] = time.perf_counter() - t

    ft_cfg = load_recipe_config(
        FinetuneConfig,
        root / "configs/finetune/sample_sequential.yaml",
        [f"device={dev}", "save_every=0", "overwrite=true"],
    )
    ft_cfg.tasks = {n: dataclasses.replace(s, data=[str(root / p) for p in s.data]) for n, s in ft_cfg.tasks.items()}
    _absolute_tokenizer(ft_cfg, root)
    ft_cfg.stages = _scaled_stages(ft_cfg.stages, FINETUNE_SCALE[quick])
    if quick:
        ft_cfg.eval_split, ft_cfg.eval_max_batches, ft_cfg.eval_batch_size = "val", 1, 32
        ft_cfg.tasks["acl_summaries"].head_args["max_new_tokens"] = 16
    for i, (name, init) in enumerate((("pretrained", str(out / "pretrain" / "model")), ("scratch", None)), 2):
        t = stage(i, f"sequential fine-tuning from {'the pretrained backbone' if init else 'scratch'}")
        finetune(dataclasses.replace(ft_cfg, init=init, output_dir=str(out / f"finetune-{name}")))
        timings[f"fine-tuning ({name})"] = time.perf_counter() - t

    t = stage(
        4,
        f"few labels: {LOW_LABEL['fraction']:.0%} of each classification task's training labels, "
        f"pretrained vs scratch, {len(LOW_LABEL['seeds'][quick])} seeds",
    )
    low_label_comparison(
        ft_cfg, out / "pretrain" / "model", out / "low-label", LOW_LABEL["steps"][quick], LOW_LABEL["seeds"][quick]
    )
    timings["few-label fine-tuning"] = time.perf_counter() - t

    t = stage(5, f"evaluation on the {ft_cfg.eval_split} split (confusion matrices)")
    evaluate_saved(out / "finetune-pretrained" / "model", ft_cfg, ft_cfg.eval_split, out / "eval", device)
    timings["evaluation"] = time.perf_counter() - t

    t = stage(6, "embeddings of test samples, projection and retrieval")
    embed_and_project(out / "finetune-pretrained" / "model", ft_cfg, out, per_task=15 if quick else 40)
    timings["embedding and retrieval"] = time.perf_counter() - t

    stage(7, "report")
    (out / "timings.json").write_text(json.dumps({k: round(v, 1) for k, v in timings.items()}, indent=2))
    html = write_report(out, quick)
    tqdm.write(f"demo done in {sum(timings.values()) / 60:.1f} min: {out / 'report.md'} and {html}")
    return html


def low_label_comparison(
    cfg: Any, pretrained: Path, out: Path, steps: int, seeds: tuple[int, ...]
) -> list[dict[str, Any]]:
    """Every classification task of the fine-tuning config `cfg` fine-tuned alone for `steps` steps
    on `LOW_LABEL["fraction"]` of its training labels, from `pretrained` and from scratch, once per
    seed -> the records (also in `out/results.jsonl`)."""
    from .protocols import finetune_protocol
    from .registry import HEADS

    tasks = [t for t, spec in cfg.tasks.items() if HEADS.get(spec.head).target in ("label", "labels")]
    runs = [(t, init, seed) for t in tasks for seed in seeds for init in ("pretrained", "scratch")]
    records = []
    for task, init, seed in tqdm(runs, desc="few-label runs"):
        value = finetune_protocol(
            cfg,
            task,
            pretrained if init == "pretrained" else None,
            LOW_LABEL["fraction"],
            seed,
            out / f"{task}-{init}-seed{seed}",
            steps,
        )
        records.append(
            {
                "task": task,
                "protocol": "finetune",
                "init": init,
                "fraction": LOW_LABEL["fraction"],
                "seed": seed,
                "metric": HEADS.get(cfg.tasks[task].head).main_metric,
                "value": value,
            }
        )
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _absolute_tokenizer(cfg: Any, root: Path) -> None:
    text = cfg.model_overrides.get("modalities.text")
    if text and not Path(text["tokenizer"]).is_absolute():
        text["tokenizer"] = str(root / text["tokenizer"])


def embed_and_project(model_dir: Path, cfg: Any, out: Path, per_task: int) -> None:
    """Embed `per_task` test samples of every classification task into the store `out/embeddings/` and plot
    a 2-D PCA projection (colour = class, marker = modality) to `out/embeddings.png`."""
    from .embedding import embed_items
    from .embedding_store import model_digest, store_header, write_store
    from .model import OmniVecModel
    from .plots import plot_projection
    from .registry import HEADS
    from .tasks import load_task_data

    model = OmniVecModel.from_pretrained(model_dir)
    items, labels, inputs = [], [], []
    for task, datasets in load_task_data(cfg).items():
        if HEADS.get(cfg.tasks[task].head).target != "label":  # single-label tasks only
            continue
        rows = [r for d in datasets for r in d.split("test")][:per_task]
        inputs.append({"input": f"{task} (test split)", "samples": len(rows)})
        for r in rows:
            item = {"text": r["text"], "path": r["where"]} if "text" in r else {"path": str(r["path"])}
            items.append({**item, "modality": datasets[0].modality})
            labels.append(f"{task}:{r['label']}")
    emb, errors = embed_items(model, items, batch_size=64, num_workers=0)
    records = [
        {
            "path": it["path"],
            "modality": it["modality"],
            "index": i,
            "label": labels[i],
            "status": "ok" if i not in errors else f"failed: {errors[i]}",
        }
        for i, it in enumerate(items)
    ]
    header = store_header(str(model_dir), model_digest(model_dir), int(emb.shape[1]), len(records), inputs)
    write_store(out / "embeddings", header, emb, records)
    plot_projection(torch.from_numpy(emb), [r["modality"] for r in records], labels, out / "embeddings.png")


def retrieval_summary(out: Path, k: int = 5) -> dict[str, Any]:
    """From the store `out/embeddings/`: per modality, the share of each sample's k nearest neighbours of
    the same modality that have its class (precision@k, against chance), and one example query."""
    from .embedding_store import open_store
    from .metrics import precision_at_k

    emb, records = open_store(out / "embeddings").load()
    sims = torch.from_numpy(emb) @ torch.from_numpy(emb).T
    label_ids = {label: i for i, label in enumerate(dict.fromkeys(r["label"] for r in records))}
    labels = torch.tensor([label_ids[r["label"]] for r in records])
    rows, examples = {}, []
    for modality in dict.fromkeys(r["modality"] for r in records):
        idx = torch.tensor([i for i, r in enumerate(records) if r["modality"] == modality])
        rows[modality] = precision_at_k(sims[idx][:, idx], labels[idx], labels[idx], k, same_set=True)
        q = int(idx[0])
        order = [int(j) for j in torch.argsort(sims[q], descending=True) if int(j) != q]
        examples.append(
            {
                "query": records[q],
                "same": [(records[j], float(sims[q, j])) for j in order if records[j]["modality"] == modality][:k],
                "other": [(records[j], float(sims[q, j])) for j in order if records[j]["modality"] != modality][:3],
            }
        )
    return {"count": len(records), "k": k, "rows": rows, "examples": examples}


def _img(path: Path, html: bool, alt: str) -> str:
    if not path.is_file():
        return f"({alt}: not produced)"
    if html:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{alt}" src="data:image/png;base64,{data}" style="max-width:100%">'
    return f"![{alt}]({path.name if path.parent.name == '' else path.as_posix()})"


def write_report(out: Path, quick: bool = False) -> Path:
    """report.md (images linked) and report.html (images inline) with every section, from what the
    demo wrote to `out` (so a report can be regenerated without rerunning anything)."""
    from .plots import plot_losses
    from .reports import (
        finetune_comparison_table,
        forgetting_matrix_table,
        metrics_table,
        retrieval_table,
        summarize_runs,
    )

    pre, scr = (json.loads((out / f"finetune-{n}" / "eval.json").read_text()) for n in ("pretrained", "scratch"))
    timings = json.loads((out / "timings.json").read_text())
    retrieval = retrieval_summary(out)
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    low_label = summarize_runs(
        [json.loads(line) for line in (out / "low-label" / "results.jsonl").read_text().splitlines()]
    )
    voices = {
        n: r["final"]["spoken_digits"]["top1"]
        for n, r in (("pretrained", pre), ("scratch", scr))
        if "spoken_digits" in r["final"]
    }
    lines = [
        f"# omnivec demo{' (quick)' if quick else ''}",
        "",
        f"omnivec_tiny on data/sample, {sum(timings.values()) / 60:.1f} minutes in all.",
        "",
        "## Results",
        "",
        f"On the {pre['split']} split; baselines: chance for classification, the lead sentence "
        f"of the abstract for summarization. The demo trains briefly ({FINETUNE_SCALE[quick]:.0%} of the steps "
        "of configs/finetune/sample_sequential.yaml; see the README for that config's results).",
        "",
        *metrics_table({"pretrained": pre["final"], "scratch": scr["final"]}, pre["baselines"]),
        "",
        "spoken_digits and spoken_mix are split by voice (data/README.md): their test clips are spoken by "
        "voices of two accents never heard in training, so those rows measure new speakers"
        + (
            f" (spoken_digits top-1: {voices['pretrained']:.3f} from the pretrained backbone, {voices['scratch']:.3f} "
            "from scratch)."
            if len(voices) == 2
            else "."
        ),
        "",
        "## Few labels: pretrained vs scratch",
        "",
        f"Each classification task fine-tuned alone on {LOW_LABEL['fraction']:.0%} of its training labels (a "
        f"stratified draw per seed, at least one per class) for {LOW_LABEL['steps'][quick]} steps, from the "
        f"pretrained backbone and from scratch; mean ± standard deviation over seeds "
        f"{list(LOW_LABEL['seeds'][quick])}, "
        f"on the {pre['split']} split. recipes/label_efficiency.py runs the full grid (5 / 25 / 100%, probes). "
        f"The demo pretrains for {PRETRAIN_STEPS[quick]} steps only: on digits, frozen features overtook a random "
        'backbone\'s only after about 1000 (README, "What pretraining buys").',
        "",
        *finetune_comparison_table(low_label),
        "",
        "## Forgetting matrix (from the pretrained backbone)",
        "",
        "Row: after stage i; column: a task's main metric; blank before the task is trained.",
        "",
        *forgetting_matrix_table(pre["forgetting_matrix"]),
    ]
    lines += [
        "",
        "## Pretraining",
        "",
        "Mean reconstruction loss of the first and last 20 steps, and on validation data at the start and the end:",
        "",
        "| modality | first 20 | last 20 | val start | val end |",
        "|---|---|---|---|---|",
    ]
    for m, s in summary["modalities"].items():
        lines.append(
            f"| {m} | {s['train_first20']:.4f} | {s['train_last20']:.4f} | {s['val_start']:.4f} | {s['val_end']:.4f} |"
        )
    lines += [
        "",
        "@@pretrain/loss.png|loss curves@@",
        "",
        "What the model reconstructs of hidden tokens (validation "
        "samples): input, what the encoder saw, reconstruction.",
        "",
        "@@pretrain/reconstructions.png|reconstructions@@",
        "",
        "## Fine-tuning loss curves",
        "",
    ]
    for stage_dir in sorted((out / "finetune-pretrained" / "stages").iterdir()):
        plot_losses(stage_dir / "metrics.jsonl", stage_dir / "loss.png")
        lines += [
            f"Stage {stage_dir.name}:",
            "",
            f"@@finetune-pretrained/stages/{stage_dir.name}/loss.png|{stage_dir.name}@@",
            "",
        ]
    lines += ["## Confusion matrices (fine-tuned from the pretrained backbone)", ""]
    lines += [f"@@eval/{p.name}|{p.stem}@@" for p in sorted((out / "eval").glob("confusion_*.png"))]
    lines += [
        "",
        "## Embeddings",
        "",
        f"{retrieval['count']} test samples embedded; PCA to 2-D, colour = class, marker = modality.",
        "",
        "@@embeddings.png|embedding projection@@",
        "",
        f"Retrieval within a modality: the share of each sample's {retrieval['k']} nearest neighbours (cosine) "
        "that have its class.",
        "",
        *retrieval_table(retrieval["rows"], "modality", retrieval["k"]),
    ]
    lines += ["", "One query per modality:", ""]
    for q in retrieval["examples"]:
        same = ", ".join(f"{r['label']} ({s:.2f})" for r, s in q["same"])
        other = ", ".join(f"{r['label']} [{r['modality']}] ({s:.2f})" for r, s in q["other"])
        lines.append(
            f"- {q['query']['label']} [{q['query']['modality']}]: same modality: {same}; other modalities: {other}"
        )
    lines += [
        "",
        "No objective aligns the modalities (the sample data has no pairs), so neighbours across "
        "modalities carry no meaning.",
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.0f} |" for k, v in timings.items()]
    lines += [f"| all | {sum(timings.values()):.0f} |"]
    text = "\n".join(lines) + "\n"

    def render(html: bool) -> str:
        return re.sub(
            r"@@([^|]+)\|([^@]+)@@",
            lambda m: _img(out / m.group(1), html, m.group(2)) if html else f"![{m.group(2)}]({m.group(1)})",
            text,
        )

    (out / "report.md").write_text(render(False))
    html_path = out / "report.html"
    html_path.write_text(_markdown_to_html(render(True)))
    return html_path


def _markdown_to_html(md: str) -> str:
    """Just enough Markdown for the report: headings, tables, list items, paragraphs, inline images."""
    body, table = [], []

    def flush_table() -> None:
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{c}</th>" for c in cells[0])
            rest = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in cells[1:])
            body.append(f"<table><tr>{head}</tr>{rest}</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{line[level:].strip()}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<li>{line[2:]}</li>")
        elif line.strip():
            body.append(f"<p>{line}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>omnivec demo</title>"
        f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
