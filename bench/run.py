"""omnivec against the implementations a user would otherwise pick, side by side in one process:
same shapes, same precision, same batch, alternating timed rounds; the median step time, samples/s,
achieved TFLOP/s (torch.utils.flop_counter), MFU against a matrix-multiply peak measured in the
same run, peak memory (CUDA) and the ratio omnivec / reference.

    python bench/run.py --device cpu              # small shapes: a few minutes on 2 CPU cores
    python bench/run.py --device cuda             # the full shapes (ViT-B, 224 px, 16 frames, ...)
    python bench/run.py --device cpu --record     # also append the table to bench/RESULTS.md
    python bench/run.py --device cuda --out DIR --profile   # DIR/table.md, DIR/profiles.txt (kernels per case)
    python bench/run.py --device cpu --shapes cuda --smoke  # full shapes, batch 2, once (a crash costs no device time)

Cases: masked image pretraining (vs transformers ViTMAEForPreTraining), masked video pretraining
(vs VideoMAEForPreTraining), audio classification fine-tuning (vs ASTForAudioClassification), a
mixed step over all five modalities (omnivec only: one backbone pass per modality, and packed),
image embedding (vs timm ViT eager and compiled, transformers ViTModel) and text embedding (vs
BertModel). Inputs are random model-ready tensors, so
data loading is not measured.
"""

import argparse
import copy
import datetime
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
import transformers
from torch.utils.flop_counter import FlopCounterMode

import omnivec
from omnivec import OmniVecConfig, OmniVecModel
from omnivec.backbone import compile_blocks
from omnivec.datasets.dataset import to_device
from omnivec.mae import DecoderConfig, MaskedPretrainer

SHAPES = {
    # width, depth, heads of the encoder/backbone; decoder; inputs; batches
    "cpu": dict(
        dim=192,
        depth=4,
        heads=3,
        dec_dim=128,
        dec_depth=2,
        dec_heads=4,
        image=112,
        patch=16,
        frames=8,
        video_image=64,
        mel=64,
        audio_frames=256,
        audio_stride=16,
        text_len=64,
        batch_image=32,
        batch_video=8,
        batch_audio=16,
        batch_embed=64,
        batch_text=64,
        mixed_variant="omnivec_tiny",
        batch_mixed=16,
        steps=3,
        rounds=9,
    ),
    "cuda": dict(
        dim=768,
        depth=12,
        heads=12,
        dec_dim=512,
        dec_depth=8,
        dec_heads=16,
        image=224,
        patch=16,
        frames=16,
        video_image=224,
        mel=128,
        audio_frames=1024,
        audio_stride=10,
        text_len=128,
        batch_image=256,
        batch_video=32,
        batch_audio=128,
        batch_embed=512,
        batch_text=512,
        mixed_variant="omnivec_base",
        batch_mixed=32,
        steps=10,
        rounds=5,
    ),
}


@dataclass
class Case:
    name: str
    samples: int  # per call
    run: Callable[[], None]  # one training step or one inference forward


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """Achieved TFLOP/s of a large square matmul: the MFU denominator."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(10 if device.type == "cuda" else 5):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / min(times) / 1e12


def train_step(
    module: torch.nn.Module, loss_fn: Callable[[], torch.Tensor], device: torch.device
) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, fused=True)  # the same optimizer for every case

    def step() -> None:
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def omnivec_model(modalities: dict, s: dict, heads: dict | None = None) -> OmniVecModel:
    cfg = OmniVecConfig.from_dict(
        {
            "backbone": {"dim": s["dim"], "depth": s["depth"], "num_heads": s["heads"]},
            "modalities": modalities,
            "heads": heads or {},
        }
    )
    return OmniVecModel(cfg)


def image_pretraining(s: dict, device: torch.device) -> tuple[Case, Case]:
    B = s["batch_image"]
    x = torch.randn(B, 3, s["image"], s["image"], device=device)
    decoder = DecoderConfig(dim=s["dec_dim"], depth=s["dec_depth"], num_heads=s["dec_heads"])
    ours = (
        MaskedPretrainer(
            omnivec_model({"image": {"image_size": s["image"], "patch_size": s["patch"], "mask_ratio": 0.75}}, s),
            decoder,
        )
        .to(device)
        .train()
    )
    config = transformers.ViTMAEConfig(
        hidden_size=s["dim"],
        num_hidden_layers=s["depth"],
        num_attention_heads=s["heads"],
        intermediate_size=4 * s["dim"],
        image_size=s["image"],
        patch_size=s["patch"],
        mask_ratio=0.75,
        norm_pix_loss=True,
        decoder_hidden_size=s["dec_dim"],
        decoder_num_hidden_layers=s["dec_depth"],
        decoder_num_attention_heads=s["dec_heads"],
        decoder_intermediate_size=4 * s["dec_dim"],
        attn_implementation="sdpa",
    )
    ref = transformers.ViTMAEForPreTraining(config).to(device).train()
    step = iter(range(10**9))
    return (
        Case("omnivec", B, train_step(ours, lambda: ours({"image": {"input": x}}, next(step))["image"], device)),
        Case("transformers ViTMAEForPreTraining", B, train_step(ref, lambda: ref(pixel_values=x).loss, device)),
    )


def video_pretraining(s: dict, device: torch.device) -> tuple[Case, Case]:
    B, T, S, p, t = s["batch_video"], s["frames"], s["video_image"], s["patch"], 2
    x = torch.randn(B, T, 3, S, S, device=device)
    decoder = DecoderConfig(dim=s["dec_dim"], depth=s["dec_depth"], num_heads=s["dec_heads"])
    ours = (
        MaskedPretrainer(
            omnivec_model(
                {"video": {"num_frames": T, "image_size": S, "patch_size": p, "tubelet_size": t, "mask_ratio": 0.9}}, s
            ),
            decoder,
        )
        .to(device)
        .train()
    )
    config = transformers.VideoMAEConfig(
        hidden_size=s["dim"],
        num_hidden_layers=s["depth"],
        num_attention_heads=s["heads"],
        intermediate_size=4 * s["dim"],
        image_size=S,
        patch_size=p,
        num_frames=T,
        tubelet_size=t,
        norm_pix_loss=True,
        use_mean_pooling=False,
        decoder_hidden_size=s["dec_dim"],
        decoder_num_hidden_layers=s["dec_depth"],
        decoder_num_attention_heads=s["dec_heads"],
        decoder_intermediate_size=4 * s["dec_dim"],
        attn_implementation="sdpa",
    )
    ref = transformers.VideoMAEForPreTraining(config).to(device).train()
    spatial, frames = (S // p) ** 2, T // t
    hidden = int(0.9 * spatial)

    def tube_mask() -> torch.Tensor:  # the same 90% of patches hidden in every frame (VideoMAE)
        noise = torch.rand(B, spatial, device=device)
        mask = torch.zeros(B, spatial, dtype=torch.bool, device=device)
        mask.scatter_(1, noise.argsort(1)[:, :hidden], True)
        return mask.repeat(1, frames)  # [B, frames * spatial]

    step = iter(range(10**9))
    return (
        Case("omnivec", B, train_step(ours, lambda: ours({"video": {"input": x}}, next(step))["video"], device)),
        Case(
            "transformers VideoMAEForPreTraining",
            B,
            train_step(ref, lambda: ref(pixel_values=x, bool_masked_pos=tube_mask()).loss, device),
        ),
    )


def audio_finetuning(s: dict, device: torch.device) -> tuple[Case, Case]:
    B, stride = s["batch_audio"], s["audio_stride"]
    x = torch.randn(B, s["audio_frames"], s["mel"], device=device)
    y = torch.randint(10, (B,), device=device)
    ours = (
        omnivec_model(
            {
                "audio": {
                    "num_mel_bins": s["mel"],
                    "target_frames": s["audio_frames"],
                    "patch_size": 16,
                    "patch_stride": stride,
                }
            },
            s,
            heads={"clips": {"type": "classification", "modality": "audio", "num_classes": 10}},
        )
        .to(device)
        .train()
    )
    config = transformers.ASTConfig(
        hidden_size=s["dim"],
        num_hidden_layers=s["depth"],
        num_attention_heads=s["heads"],
        intermediate_size=4 * s["dim"],
        num_mel_bins=s["mel"],
        max_length=s["audio_frames"],
        patch_size=16,
        frequency_stride=stride,
        time_stride=stride,
        num_labels=10,
        attn_implementation="sdpa",
    )
    ref = transformers.ASTForAudioClassification(config).to(device).train()
    return (
        Case("omnivec", B, train_step(ours, lambda: F.cross_entropy(ours({"audio": x}).logits["clips"], y), device)),
        Case(
            "transformers ASTForAudioClassification",
            B,
            train_step(ref, lambda: ref(input_values=x, labels=y).loss, device),
        ),
    )


def mixed_pretraining(s: dict, device: torch.device) -> tuple[Case, Case]:
    config = omnivec.model_config(s["mixed_variant"], **{"modalities.text.tokenizer": "bytes"})
    model = OmniVecModel(config)
    ours = MaskedPretrainer(model, DecoderConfig(dim=s["dec_dim"], depth=s["dec_depth"], num_heads=s["dec_heads"]))
    ours = ours.to(device).train()
    packed = copy.deepcopy(ours)
    packed.pack = True  # one backbone pass over the five modalities (omnivec/packing.py)
    inputs = {m: {"input": to_device(x, device)} for m, x in omnivec.example_inputs(config, s["batch_mixed"]).items()}
    steps = iter(range(10**9)), iter(range(10**9))  # the same masks, step by step, for both
    samples = s["batch_mixed"] * len(inputs)
    return (
        Case(
            f"omnivec ({s['mixed_variant']}, 5 modalities)",
            samples,
            train_step(ours, lambda: sum(ours(inputs, next(steps[0])).values()), device),
        ),
        Case(
            f"omnivec packed ({s['mixed_variant']}, 5 modalities)",
            samples,
            train_step(packed, lambda: sum(packed(inputs, next(steps[1])).values()), device),
        ),
    )


def image_embedding(s: dict, device: torch.device) -> tuple[Case, ...]:
    B = s["batch_embed"]
    x = torch.randn(B, 3, s["image"], s["image"], device=device)
    ours = omnivec_model({"image": {"image_size": s["image"], "patch_size": s["patch"]}}, s).to(device).eval()
    ours_compiled = omnivec_model({"image": {"image_size": s["image"], "patch_size": s["patch"]}}, s).to(device).eval()
    compile_blocks(ours_compiled)
    vit = dict(
        img_size=s["image"],
        patch_size=s["patch"],
        embed_dim=s["dim"],
        depth=s["depth"],
        num_heads=s["heads"],
        num_classes=0,
    )
    timm_eager = timm.create_model("vit_base_patch16_224", **vit).to(device).eval()
    timm_compiled = torch.compile(timm.create_model("vit_base_patch16_224", **vit).to(device).eval())
    hf = (
        transformers.ViTModel(
            transformers.ViTConfig(
                hidden_size=s["dim"],
                num_hidden_layers=s["depth"],
                num_attention_heads=s["heads"],
                intermediate_size=4 * s["dim"],
                image_size=s["image"],
                patch_size=s["patch"],
                attn_implementation="sdpa",
            ),
            add_pooling_layer=False,
        )
        .to(device)
        .eval()
    )
    return (
        Case("omnivec", B, lambda: ours.embed({"image": x})),
        Case("omnivec (torch.compile)", B, lambda: ours_compiled.embed({"image": x})),
        Case("timm ViT (eager)", B, lambda: timm_eager(x)),
        Case("timm ViT (torch.compile)", B, lambda: timm_compiled(x)),
        Case("transformers ViTModel", B, lambda: hf(pixel_values=x).last_hidden_state),
    )


def text_embedding(s: dict, device: torch.device) -> tuple[Case, Case]:
    B, L = s["batch_text"], s["text_len"]
    ids = torch.randint(5, 30522, (B, L), device=device)
    mask = torch.ones(B, L, dtype=torch.long, device=device)
    ours = omnivec_model({"text": {"vocab_size": 30522, "max_length": L}}, s).to(device).eval()
    bert = (
        transformers.BertModel(
            transformers.BertConfig(
                hidden_size=s["dim"],
                num_hidden_layers=s["depth"],
                num_attention_heads=s["heads"],
                intermediate_size=4 * s["dim"],
                max_position_embeddings=max(512, L),
                attn_implementation="sdpa",
            ),
            add_pooling_layer=False,
        )
        .to(device)
        .eval()
    )
    return (
        Case("omnivec", B, lambda: ours.embed({"text": {"input_ids": ids, "attention_mask": mask}})),
        Case("transformers BertModel", B, lambda: bert(input_ids=ids, attention_mask=mask).last_hidden_state),
    )


BENCHMARKS = {
    "image masked pretraining step": (image_pretraining, True),
    "video masked pretraining step": (video_pretraining, True),
    "audio fine-tuning step": (audio_finetuning, True),
    "mixed multimodal pretraining step": (mixed_pretraining, True),
    "image embedding": (image_embedding, False),
    "text embedding": (text_embedding, False),
}


def count_flops(case: Case, training: bool) -> float:
    with FlopCounterMode(display=False) as counter:
        if training:
            case.run()
        else:
            with torch.inference_mode():
                case.run()
    return counter.get_total_flops()


def measure(cases: tuple[Case, ...], training: bool, s: dict, device: torch.device, autocast) -> list[dict]:
    """Warm up, count FLOPs, then alternate timed rounds of `steps` calls between the cases."""
    grad = torch.enable_grad if training else torch.inference_mode
    results = []
    with autocast, grad():
        for case in cases:
            for _ in range(2):  # warm-up (and compilation)
                case.run()
        flops = [count_flops(c, training) for c in cases]
        times: list[list[float]] = [[] for _ in cases]
        peaks = [0] * len(cases)
        for round_ in range(s["rounds"]):
            order = list(enumerate(cases))
            for i, case in order if round_ % 2 == 0 else order[::-1]:  # alternate which runs first
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                sync(device)
                start = time.perf_counter()
                for _ in range(s["steps"]):
                    case.run()
                sync(device)
                times[i].append((time.perf_counter() - start) / s["steps"])
                if device.type == "cuda":
                    peaks[i] = max(peaks[i], torch.cuda.max_memory_allocated())
    for case, t, f, peak in zip(cases, times, flops, peaks):
        median = statistics.median(t)
        results.append(
            {
                "impl": case.name,
                "step_ms": median * 1e3,
                "samples_per_s": case.samples / median,
                "tflops": f / median / 1e12,
                "peak_gib": peak / 2**30 if device.type == "cuda" else None,
            }
        )
    return results


def profile(cases: tuple[Case, ...], training: bool, name: str, device: torch.device, autocast, out: Path) -> None:
    """`torch.profiler` over a few calls of each case, appended to OUT/profiles.txt (one file: the
    device tool brings back a few files only): the operators and kernels by self time (CUDA time
    on a GPU), the top 30 per case."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    grad = torch.enable_grad if training else torch.inference_mode
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for case in cases:
        with autocast, grad(), torch_profile(activities=activities) as prof:
            for _ in range(3):
                case.run()
            sync(device)
        table = prof.key_averages().table(sort_by=sort, row_limit=30)
        with open(out / "profiles.txt", "a") as f:
            f.write(f"## {name}: {case.name} (3 calls)\n\n{table}\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--precision", default=None, choices=["fp32", "bf16"], help="default: bf16 autocast on cuda, fp32 on cpu"
    )
    parser.add_argument("--only", nargs="*", help="run only these benchmarks (names as printed)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    parser.add_argument("--out", type=Path, help="also write the table to OUT/table.md (and profiles there)")
    parser.add_argument(
        "--profile", action="store_true", help="write a torch.profiler summary per case to --out/profiles.txt"
    )
    parser.add_argument("--shapes", choices=sorted(SHAPES), help="the shape set (default: --device's)")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every batch 2, one round of one step: checks that each case runs (times mean nothing)",
    )
    args = parser.parse_args()
    if args.profile and not args.out:
        parser.error("--profile writes to --out DIR")
    if args.smoke and args.record:
        parser.error("--smoke times nothing worth recording")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profiles.txt").unlink(missing_ok=True)
    device = torch.device(args.device)
    s = dict(SHAPES[args.shapes or args.device])
    if args.smoke:
        s.update({k: 2 for k in s if k.startswith("batch_")}, steps=1, rounds=1)
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    peak = matmul_peak(device, dtype)
    machine = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    options = "".join(f" --{k} {v}" for k, v in (("precision", args.precision), ("shapes", args.shapes)) if v)
    options += " --smoke" if args.smoke else ""
    header = [
        f"## {datetime.date.today()}: `python bench/run.py --device {args.device}{options}`",
        "",
        f"{machine}; torch {torch.__version__}, transformers {transformers.__version__}, timm {timm.__version__}; "
        f"{precision}; shapes: {s}; {precision} matmul peak measured {peak:.2f} TFLOP/s.",
        "",
        "| benchmark | implementation | step ms | samples/s | TFLOP/s | MFU | peak GiB | omnivec / this |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    print("\n".join(header), flush=True)
    lines = []
    for name, (build, training) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        cases = build(s, device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=precision == "bf16")
        results = measure(cases, training, s, device, autocast)
        if args.profile:
            profile(cases, training, name, device, autocast, args.out)
        compiled = next((r for r in results if r["impl"] == "omnivec (torch.compile)"), results[0])
        for r in results:
            ours = compiled if "torch.compile" in r["impl"] else results[0]  # like for like
            ratio = "" if r["impl"].startswith("omnivec") else f"{ours['samples_per_s'] / r['samples_per_s']:.2f}x"
            peak_gib = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a"
            line = (
                f"| {name} | {r['impl']} | {r['step_ms']:.1f} | {r['samples_per_s']:.1f} | {r['tflops']:.3f} | "
                f"{100 * r['tflops'] / peak:.1f}% | {peak_gib} | {ratio} |"
            )
            lines.append(line)
            print(line, flush=True)
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.out:
        (args.out / "table.md").write_text("\n".join(header + lines) + "\n")
    if args.record:
        path = Path(__file__).parent / "RESULTS.md"
        text = (
            path.read_text()
            if path.is_file()
            else "# Benchmark results\n\nAppended by `python bench/run.py --record`.\n"
        )
        path.write_text(text.rstrip("\n") + "\n\n" + "\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
