#!/usr/bin/env bash
# On a GPU machine lent by the `device` tool (issue 14): record the first slice of the fashion32
# study at the paper's protocol (scripts/fashion32_paper_gpu.py) in the background, wait up to
# SECONDS, and leave in $OUT what is recorded: the records (records.tgz, weights left out), the
# logs, and ClusTR + QTRADES's weights in 15 MB parts once trained. A second call (`wait`) on the
# still-warm machine collects what the first could not wait for. Carried: data/FashionMNIST/raw
# (Debian's four .gz files) and .carry/pyautoattack.
#   scripts/lent_gpu.sh start SECONDS   |   scripts/lent_gpu.sh wait SECONDS
set -u
mode=$1
budget=$2
work=/tmp/lent-gpu
export CLUSTR_DATA=$PWD/data PYTHONPATH=$PWD/.carry:$PWD PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
if [ "$mode" = start ]; then
  mkdir -p "$work"
  { nvidia-smi; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"; } \
    > "$work/machine.txt" 2>&1
  setsid nohup python3 scripts/fashion32_paper_gpu.py --root "$work" --device cuda \
    > "$work/record.log" 2>&1 < /dev/null &
  (timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py \
    > "$work/cuda-tests.log" 2>&1) &
fi
end=$((SECONDS + budget))
while [ $SECONDS -lt $end ] && [ ! -e "$work/done" ]; do sleep 5; done
tar czf "$OUT/records.tgz" --exclude='*.pt' -C "$work" results 2>/dev/null
cp "$work"/*.log "$work/machine.txt" "$OUT/" 2>/dev/null
weights=$(ls "$work"/results/*/models/*clustr_qtrades*.pt 2>/dev/null | head -1)
[ -n "$weights" ] && split -b 15M -d "$weights" "$OUT/$(basename "$weights").part"
ls -la "$OUT"
tail -5 "$work/record.log"
