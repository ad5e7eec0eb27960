#!/usr/bin/env bash
# Every GPU measurement of issue #18 in one call (the device machine is lent for minutes):
#   bash bench/device.sh OUT        # e.g. OUT=$OUT on the device tool; about 6 minutes on one H200
# OUT/bench/table.md: `bench/run.py --device cuda` (full shapes, bf16) with a torch.profiler kernel
# summary per case; OUT/gpu_check.txt: bench/gpu_check.py; OUT/env.txt: the card and versions.
set -uo pipefail
out=${1:?usage: bash bench/device.sh OUT}
mkdir -p "$out/bench"
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && py=.venv/bin/python || py=python
{ nvidia-smi; $py -c "import torch, transformers, timm; print(torch.__version__, transformers.__version__, timm.__version__)"; } > "$out/env.txt" 2>&1
timeout 420 $py bench/run.py --device cuda --out "$out/bench" --profile > "$out/bench/log.txt" 2>&1
echo "bench/run.py: exit $?" >> "$out/env.txt"
timeout 120 $py bench/gpu_check.py > "$out/gpu_check.txt" 2>&1
echo "bench/gpu_check.py: exit $?" >> "$out/env.txt"
