#!/usr/bin/env bash
# Every GPU measurement of issue #18 in one call (the device machine is lent for minutes):
#   bash bench/device.sh OUT [run.py options]   # OUT=$OUT on the device tool; at most 9 minutes (timeouts 420 s + 120 s)
# Extra options go to bench/run.py, e.g. a rerun of one case after a fix: --only "image masked pretraining step"
# Five files come back (the tool returns at most 8, two folders down): OUT/bench/table.md, the
# `bench/run.py --device cuda` table (full shapes, bf16); OUT/bench/profiles.txt, a torch.profiler
# kernel summary per case; OUT/bench/log.txt; OUT/gpu_check.txt, bench/gpu_check.py; OUT/env.txt, the
# card, the versions and each step's exit status. Checked on CPU beforehand, at no device time:
#   python bench/run.py --device cpu --shapes cuda --smoke --precision bf16 --out /tmp/smoke --profile
set -uo pipefail
out=$(realpath -m "${1:?usage: bash bench/device.sh OUT}")
mkdir -p "$out/bench"
cd "$(dirname "$0")/.."
# The device image's python3 holds torch, timm, transformers and accelerate but not omnivec (and no
# `python`): the checkout goes on the path; omnivec's file readers (av, open3d) are not needed here.
[ -x .venv/bin/python ] && py=.venv/bin/python || py=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi; $py -c "import torch, transformers, timm; print(torch.__version__, transformers.__version__, timm.__version__)"; } > "$out/env.txt" 2>&1
timeout 420 $py bench/run.py --device cuda --out "$out/bench" --profile "${@:2}" > "$out/bench/log.txt" 2>&1
echo "bench/run.py: exit $?" >> "$out/env.txt"
timeout 120 $py bench/gpu_check.py > "$out/gpu_check.txt" 2>&1
echo "bench/gpu_check.py: exit $?" >> "$out/env.txt"
