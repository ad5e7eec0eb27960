"""GPU check: the pretraining, fine-tuning and embedding paths on CUDA in bf16, with throughput.

    python bench/gpu_check.py [--variant omnivec_base] [--steps 30]
    python bench/gpu_check.py --device cpu --smoke    # every check at batch 2, on CPU: no device time lost to a crash

Uses random model-ready batches (`omnivec.example_inputs`), so no file decoders are needed.
Prints one line per check; exits non-zero when a loss is not finite or bf16 disagrees with fp32.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import omnivec
from omnivec.datasets.dataset import to_device
from omnivec.heads.summarization import SummarizationHead, SummarizationHeadConfig
from omnivec.mae import DecoderConfig, MaskedPretrainer
from omnivec.trainer import TrainConfig, Trainer

OFFLINE = {"modalities.text.tokenizer": "bytes"}  # the vocabulary size stays; no hub access needed


class RandomBatches:
    """{modality: collated batch} of fixed random inputs, forever (what MultiModalLoader yields)."""

    def __init__(self, config, batch_size: int, modalities):
        inputs = omnivec.example_inputs(config, batch_size)
        self.batch = {
            m: {"input": inputs[m], "target": None, "index": torch.arange(batch_size), "skipped": []}
            for m in modalities
        }

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a"
    peak = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return f"{peak:.1f} GiB"


def pretrain_throughput(
    variant: str, modalities, batch_size: int, steps: int, decoder: DecoderConfig, device: torch.device
) -> float:
    torch.manual_seed(0)
    model = omnivec.build_model(variant, **OFFLINE)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            output_dir=tmp,
            max_steps=steps,
            batch_size=batch_size,
            precision="bf16",
            log_every=steps,
            save_every=0,
            warmup_steps=2,
            num_workers=0,
            device="auto" if device.type == "cuda" else "cpu",
        )
        trainer = Trainer(cfg, MaskedPretrainer(model, decoder))
        batches = RandomBatches(model.config, batch_size, modalities)
        warm = {m: {"input": to_device(b["input"], trainer.device), "target": None} for m, b in batches.batch.items()}
        for _ in range(3):  # warm-up outside the timing (not optimizer steps)
            sum(trainer.module(warm, step=0).values()).backward()
        trainer.optimizer.zero_grad(set_to_none=True)
        sync(device)
        start = time.perf_counter()
        trainer.fit(batches)
        sync(device)
        elapsed = time.perf_counter() - start
        last = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()][-1]
    losses = {k: v for k, v in last.items() if k.startswith("loss/")}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    rate = steps * batch_size / elapsed
    print(
        f"pretrain {variant} {'+'.join(modalities)} batch {batch_size}: {rate:.0f} samples/s per modality, "
        f"{elapsed / steps * 1000:.0f} ms/step, peak {peak_memory(device)}, "
        f"last losses { ({k[5:]: round(v, 3) for k, v in losses.items()}) }"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variant", default="omnivec_base")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="batch 2 and 2 steps everywhere: checks the paths run")
    args = parser.parse_args()
    device = torch.device(args.device)
    assert device.type == "cpu" or torch.cuda.is_available(), "no GPU"
    print(torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch.__version__)
    batch = {"image": 256, "video": 32, "mixed": 32, "check": 16, "embed": 512, "summary": 8}
    if args.smoke:
        batch, args.steps = dict.fromkeys(batch, 2), 2
    dec = DecoderConfig(dim=512, depth=8, num_heads=16)
    pretrain_throughput(args.variant, ["image"], batch["image"], args.steps, dec, device)
    pretrain_throughput(args.variant, ["video"], batch["video"], args.steps, dec, device)
    pretrain_throughput(
        args.variant, ["image", "video", "audio", "text", "point_cloud"], batch["mixed"], args.steps, dec, device
    )

    # embeddings: bf16 agrees with fp32
    torch.manual_seed(0)
    model = omnivec.build_model(args.variant, **OFFLINE).to(device).eval()
    inputs = to_device(omnivec.example_inputs(model.config, batch["check"]), device)
    with torch.inference_mode():
        full = model.embed(inputs)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            half = model.embed(inputs)
    for m in full:
        cos = torch.nn.functional.cosine_similarity(full[m], half[m].float()).min().item()
        print(f"embed {m}: bf16 vs fp32 min cosine {cos:.4f}")
        assert cos > 0.99, m
    x = omnivec.example_inputs(model.config, batch["embed"])["image"].to(device)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for _ in range(3):
            model.embed({"image": x})
        sync(device)
        start = time.perf_counter()
        for _ in range(10):
            model.embed({"image": x})
        sync(device)
    print(f"embed image batch {batch['embed']} bf16: {10 * batch['embed'] / (time.perf_counter() - start):.0f} img/s")

    # summarization head: teacher forcing and generation on the device
    head = SummarizationHead(SummarizationHeadConfig(modality="text", dim=256, depth=2, max_new_tokens=32), 768).to(
        device
    )
    hidden = torch.randn(batch["summary"], 64, 768, device=device)
    loss = head.loss(hidden, None, ["a short summary"] * batch["summary"])
    loss.backward()
    ids = head.generate(hidden, num_beams=4)
    print(f"summarization: loss {loss.item():.3f}, generated {tuple(ids.shape)} on {ids.device}")
    print("gpu check: ok")


if __name__ == "__main__":
    main()
