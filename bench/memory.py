"""Peak training memory with and without activation checkpointing, per variant and batch size, for
a masked pretraining step (image MAE: mask 0.75, decoder 128 x 2) and a fine-tuning step (image
classification head, 10 classes), each a full AdamW step (forward, backward, optimizer) on random
model-ready images at the variant's size (omnivec_tiny: 32 px, small and base: 224 px). The
variants keep only their image modality (the text encoder of the full-size ones needs a hub tokenizer;
the backbone, which holds the activations, is the whole variant's).

    python bench/memory.py [--variants omnivec_tiny omnivec_small omnivec_base] [--device cpu|cuda] [--out FILE]

Each measurement runs in a fresh process: one warm-up step (AdamW creates its state), then the
measured steps. CPU: the peak resident memory (VmHWM, reset through /proc/self/clear_refs just
before the measured step) minus the resident memory of the process before the model was built
(Python and the imports); glibc's malloc is told to map every block over 64 KiB on its own
(MALLOC_MMAP_THRESHOLD_, which also stops its threshold from growing), so a freed tensor leaves the
resident set and the next step's peak is its own. CUDA: torch.cuda.max_memory_allocated, reset
before the measured step. "state" is what stays between steps (weights, AdamW moments); "step peak"
the peak of the whole step (state, activations, gradients, temporaries). The loss of the first
step (before any update) must match with and without checkpointing to 1e-6 (fp32).

The end of the output turns the two batch sizes of each row into a line (peak = fixed + batch x
per sample) and estimates the largest batch (at the variant's image size) that fits a GPU (see the
"what fits where" in docs/scaling.md).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BATCHES = {"omnivec_tiny": [32, 128], "omnivec_small": [8, 32], "omnivec_base": [8, 16]}
ONLY_IMAGE = {"video": None, "audio": None, "text": None, "point_cloud": None}
MIB = 2**20


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(args: argparse.Namespace) -> None:
    """One measurement: prints one JSON line."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    import omnivec
    from omnivec.finetuning import FinetuneModule
    from omnivec.mae import DecoderConfig, MaskedPretrainer

    cuda = args.device == "cuda"
    before = 0 if cuda else rss_bytes("VmRSS")  # Python, torch and omnivec's imports
    torch.manual_seed(0)
    heads = {"cls": {"type": "classification", "modality": "image", "num_classes": 10}}
    model = omnivec.build_model(args.variant, modalities=ONLY_IMAGE, heads=heads)
    if args.checkpointing:
        model.set_grad_checkpointing(True)
    images = omnivec.example_inputs(model.config, args.batch, seed=1)["image"]
    if args.step == "pretrain":
        module = MaskedPretrainer(model, DecoderConfig(dim=128, depth=2, num_heads=4))
        batch = {"image": {"input": images}}
    else:
        module = FinetuneModule(model)
        batch = {"cls": {"input": images, "target": torch.arange(args.batch) % 10}}
    device = torch.device(args.device)
    module.to(device).train()
    batch = {k: {n: v.to(device) for n, v in b.items()} for k, b in batch.items()}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)
    params = sum(p.numel() for p in module.parameters())

    def step() -> float:
        loss = sum(module(batch, step=0).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    first_loss = step()  # warm-up: AdamW's state exists from here on
    if cuda:
        torch.cuda.synchronize()
        state = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        state = rss_bytes("VmRSS") - before
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() if cuda else rss_bytes("VmHWM") - before
    print(
        json.dumps(
            {
                "variant": args.variant,
                "step": args.step,
                "batch": args.batch,
                "checkpointing": args.checkpointing,
                "params": params,
                "state_mib": state / MIB,
                "peak_mib": peak / MIB,
                "step_s": sorted(times)[len(times) // 2],
                "first_loss": first_loss,
            }
        )
    )


def measure(variant: str, step: str, batch: int, checkpointing: bool, device: str, steps: int) -> dict:
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "MALLOC_TRIM_THRESHOLD_": "0",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    command = [
        sys.executable,
        __file__,
        "--child",
        "--variant",
        variant,
        "--step",
        step,
        "--batch",
        str(batch),
        "--device",
        device,
        "--steps",
        str(steps),
    ] + (["--checkpointing"] if checkpointing else [])
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{variant} {step} batch {batch}: failed\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fits(free_gib: float, fixed_mib: float, per_sample_mib: float) -> int:
    return max(0, int((free_gib * 1024 - fixed_mib) // per_sample_mib))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(BATCHES))
    parser.add_argument("--batches", nargs="+", type=int, help="batch sizes (default: two per variant, see BATCHES)")
    parser.add_argument("--steps", type=int, default=2, help="measured steps after the warm-up (median time)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the tables to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import platform

    import torch

    what = "torch.cuda.max_memory_allocated" if args.device == "cuda" else "peak RSS over the process's start"
    lines = [
        f"`python bench/memory.py --device {args.device} --variants {' '.join(args.variants)}`: {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, fp32; memory = {what}",
        "",
        "| variant | step | batch | params | checkpointing | state MiB | step peak MiB | peak change | step s "
        "| time change | first loss |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    print("\n".join(lines), flush=True)
    results = []
    for variant in args.variants:
        for step in ("pretrain", "finetune"):
            for batch in args.batches or BATCHES[variant]:
                plain = measure(variant, step, batch, False, args.device, args.steps)
                ckpt = measure(variant, step, batch, True, args.device, args.steps)
                results += [plain, ckpt]
                same = abs(plain["first_loss"] - ckpt["first_loss"]) <= 1e-6
                for r in (plain, ckpt):
                    change = f"{100 * (r['peak_mib'] / plain['peak_mib'] - 1):+.0f}%" if r is ckpt else ""
                    slower = f"{100 * (r['step_s'] / plain['step_s'] - 1):+.0f}%" if r is ckpt else ""
                    loss = f"{r['first_loss']:.6f}" + ("" if r is plain else " (same)" if same else " (DIFFERS)")
                    row = (
                        f"| {variant} | {step} | {batch} | {r['params'] / 1e6:.1f}M "
                        f"| {'yes' if r['checkpointing'] else 'no'} | {r['state_mib']:.0f} | {r['peak_mib']:.0f} "
                        f"| {change} | {r['step_s']:.2f} | {slower} | {loss} |"
                    )
                    lines.append(row)
                    print(row, flush=True)
    # A line through the two batch sizes of each row: peak = fixed + batch * per_sample.
    estimates = len(lines)
    lines += [
        "",
        "Per-sample memory (fp32, from the two batch sizes) and the batch of that step that fits a GPU "
        "(estimate: 16 bytes per parameter for fp32 weights, gradients and AdamW moments, plus 2 for bf16 "
        "weight copies, plus batch x half the fp32 per-sample memory for bf16 activations, in 90% of the card):",
        "",
        "| variant | step | checkpointing | fixed MiB | MiB / sample | 24 GB | 40 GB | 80 GB |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for variant in args.variants:
        for step in ("pretrain", "finetune"):
            for ckpt in (False, True):
                rows = sorted(
                    (
                        r
                        for r in results
                        if r["variant"] == variant and r["step"] == step and r["checkpointing"] == ckpt
                    ),
                    key=lambda r: r["batch"],
                )
                if len(rows) < 2:
                    continue
                a, b = rows[0], rows[-1]
                per_sample = (b["peak_mib"] - a["peak_mib"]) / (b["batch"] - a["batch"])
                fixed = a["peak_mib"] - a["batch"] * per_sample
                gpu_fixed = 18 * a["params"] / MIB
                batches = [fits(0.9 * g * 1e9 / 2**30, gpu_fixed, per_sample / 2) for g in (24, 40, 80)]
                lines.append(
                    f"| {variant} | {step} | {'yes' if ckpt else 'no'} | {fixed:.0f} | {per_sample:.1f} | "
                    + " | ".join(str(n) for n in batches)
                    + " |"
                )
    print("\n".join(lines[estimates:]))
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
