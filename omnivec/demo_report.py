"""The demo's report: report.md (images linked) and report.html (images inline), written from what
`omnivec demo` left in its run folder (`demo.json` holds its settings), so a report can be
regenerated without rerunning anything."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import torch

from .embedding_store import open_store
from .metrics import precision_at_k
from .plots import plot_losses
from .reports import forgetting_matrix_table, metrics_table, retrieval_table


def retrieval_summary(out: Path, k: int = 5) -> dict[str, Any]:
    """From the store `out/embeddings/`: per modality, the share of each sample's k nearest neighbours of
    the same modality that have its class (precision@k, against chance), and one example query."""

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


def probe_count(above: dict[str, bool]) -> str:
    """The one-line verdict of the probe table, per modality."""
    yes = [m for m, v in above.items() if v]
    return (
        f"pretrained k-NN above random by > 2 sd on {len(yes)} of {len(above)} modalities"
        + (f" ({', '.join(yes)})" if yes else "")
        + "."
    )


def probe_table(rows: list[dict[str, Any]]) -> list[str]:
    """One row per task: k-NN and linear probe of the pretrained backbone against the random ones."""

    def cells(cell: dict | None) -> list[str]:
        return (
            [f"{cell['pretrained']:.3f}", f"{cell['random_mean']:.3f} ± {cell['random_sd']:.3f}"] if cell else ["", ""]
        )

    lines = [
        "| task | modality | metric | k-NN pretrained | k-NN random | k-NN pretrained - random mean "
        "| > 2 sd of random | linear pretrained | linear random |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        knn, linear = r.get("knn"), r.get("linear")
        gap = ["", "-"] if knn is None else [f"{r['knn_gap']:+.3f}", "yes" if r["above_2sd"] else "no"]
        row = [r["task"], r["modality"], (knn or linear)["metric"], *cells(knn), *gap, *cells(linear)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _img(path: Path, html: bool, alt: str) -> str:
    if not path.is_file():
        return f"({alt}: not produced)"
    if html:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{alt}" src="data:image/png;base64,{data}" style="max-width:100%">'
    return f"![{alt}]({path.name if path.parent.name == '' else path.as_posix()})"


def results_section(pre: dict[str, Any], scr: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The fine-tuned models' metrics against the baselines, and what the voice split measures."""
    voices = {
        n: r["final"]["spoken_digits"]["top1"]
        for n, r in (("pretrained", pre), ("scratch", scr))
        if "spoken_digits" in r["final"]
    }
    return [
        "## Results",
        "",
        f"On the {pre['split']} split; baselines: chance for classification, the lead sentence "
        f"of the abstract for summarization. The demo trains briefly ({settings['finetune_scale']:.0%} of the steps "
        "of configs/finetune/sample_sequential.yaml; see docs/finetuning.md for that config's results).",
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
    ]


def probes_section(probes: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """The frozen probes of the pretrained backbone against the random ones (`probes.json`)."""
    return [
        "## Frozen probes: pretrained vs random backbones",
        "",
        f"The backbone pretrained above (before any fine-tuning) and {len(probes['random_seeds'])} randomly "
        f"initialised backbones of the same architecture (seeds {probes['random_seeds']}, fixed in advance), "
        "frozen: weighted k-NN (k="
        f"{probes['settings']['k']}, temperature {probes['settings']['temperature']}, DINO) and a linear probe "
        f"(BatchNorm + linear, SGD, {probes['settings']['epochs']} epochs, MAE) on the L2-normalised embeddings, "
        f"fitted on the {probes['fit_split']} split and scored on the {probes['split']} split. *random*: mean ± sample "
        "standard deviation over the random backbones; *> 2 sd of random*: the pretrained k-NN minus the random "
        "mean exceeds twice that standard deviation. k-NN has no multi-label variant (spoken_mix: linear probe, "
        f"mAP). The demo pretrains for {settings['pretrain_steps']} steps; recipes/label_efficiency.py also "
        "fine-tunes on 5 / 25 / 100% of the labels.",
        "",
        probe_count(probes["modalities_above"]),
        "",
        *probe_table(probes["rows"]),
    ]


def training_sections(out: Path, pre: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    """The forgetting matrix, pretraining losses and reconstructions, fine-tuning loss curves and
    confusion matrices (`@@path|alt@@` marks an image)."""
    lines = [
        "## Forgetting matrix (from the pretrained backbone)",
        "",
        "Row: after stage i; column: a task's main metric; blank before the task is trained.",
        "",
        *forgetting_matrix_table(pre["forgetting_matrix"]),
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
    return lines + [f"@@eval/{p.name}|{p.stem}@@" for p in sorted((out / "eval").glob("confusion_*.png"))]


def embeddings_section(retrieval: dict[str, Any]) -> list[str]:
    """The 2-D projection, retrieval precision per modality and one query per modality."""
    lines = [
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
        "",
        "One query per modality:",
        "",
    ]
    for q in retrieval["examples"]:
        same = ", ".join(f"{r['label']} ({s:.2f})" for r, s in q["same"])
        other = ", ".join(f"{r['label']} [{r['modality']}] ({s:.2f})" for r, s in q["other"])
        lines.append(
            f"- {q['query']['label']} [{q['query']['modality']}]: same modality: {same}; other modalities: {other}"
        )
    return lines + [
        "",
        "No objective aligns the modalities (the sample data has no pairs), so neighbours across "
        "modalities carry no meaning.",
    ]


def write_report(out: Path) -> Path:
    """report.md (images linked) and report.html (images inline) with every section, from what the
    demo wrote to `out` (so a report can be regenerated without rerunning anything)."""
    settings = json.loads((out / "demo.json").read_text())
    pre, scr = (json.loads((out / f"finetune-{n}" / "eval.json").read_text()) for n in ("pretrained", "scratch"))
    timings = json.loads((out / "timings.json").read_text())
    summary = json.loads((out / "pretrain" / "summary.json").read_text())
    probes = json.loads((out / "probes.json").read_text())
    lines = [
        f"# omnivec demo{' (quick)' if settings['quick'] else ''}",
        "",
        f"omnivec_tiny on data/sample, {sum(timings.values()) / 60:.1f} minutes in all.",
        "",
        *results_section(pre, scr, settings),
        "",
        *probes_section(probes, settings),
        "",
        *training_sections(out, pre, summary),
        "",
        *embeddings_section(retrieval_summary(out)),
        "",
        "## Time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.0f} |" for k, v in timings.items()],
        f"| all | {sum(timings.values()):.0f} |",
    ]
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
    body: list[str] = []
    table: list[str] = []

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
