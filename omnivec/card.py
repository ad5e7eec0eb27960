"""The model card: a README.md beside the weights, as a Hugging Face model folder has one."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from .reports import metrics_table
from .version import __version__


def model_card(config: Any, directory: Path, parameters: int) -> str:
    """Markdown: what the model was built from, its modalities and heads (with their labels), the
    metrics of the run's eval.json when the folder sits in a run, and the command that made it."""
    backbone = config.backbone
    start = f"`{backbone.pretrained}`" if backbone.pretrained else "random initialisation"
    lines = [
        "---",
        "library_name: omnivec",
        "tags: [multimodal, " + ", ".join(config.modalities) + "]",
        "---",
        "",
        f"# {directory.resolve().parent.name}/{directory.name}",
        "",
        f"An omnivec model ({parameters / 1e6:.2f}M parameters): per-modality encoders feeding one shared "
        f"transformer backbone ({backbone.dim} wide, {backbone.depth} blocks, {backbone.num_heads} heads, "
        f"started from {start}), built from variant `{config.variant or 'custom'}` with omnivec {__version__}.",
        "",
        "```python",
        "import omnivec",
        "",
        f'model = omnivec.OmniVecModel.from_pretrained("{directory}")',
        "embeddings = model.embed(batch)  # {modality: [B, D]}",
        "```",
        "",
        "## Modalities",
        "",
        "| modality | encoder | mask ratio (pretraining) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {m} | {f'`{c.pretrained}`' if c.pretrained else 'omnivec'} | {c.mask_ratio} |"
        for m, c in config.modalities.items()
    ]
    if config.heads:
        lines += ["", "## Heads", "", "| head | type | modality | labels |", "|---|---|---|---|"]
        for name, h in config.heads.items():
            labels = list(getattr(h, "labels", ()) or ())
            shown = ", ".join(map(str, labels[:20])) + (f", ... ({len(labels)})" if len(labels) > 20 else "")
            lines.append(f"| {name} | {h.type} | {h.modality} | {shown} |")
    report = directory.parent / "eval.json"
    if report.is_file():
        run = json.loads(report.read_text())
        lines += [
            "",
            f"## Metrics ({run['split']} split, from {report.parent.name}/eval.json)",
            "",
            *metrics_table({"value": run["final"]}, run.get("baselines", {})),
        ]
    lines += [
        "",
        "## Made by",
        "",
        "```bash",
        " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "```",
        "",
    ]
    return "\n".join(lines)
