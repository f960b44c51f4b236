#!/usr/bin/env bash
# On a GPU machine lent by this workplace's `device` tool (issue 14): record the first slice of
# the fashion32 study at the paper's protocol (scripts/fashion32_paper_gpu.py) in the background,
# wait up to SECONDS, and leave in $OUT (at most 8 files of 16 MiB come back) what is recorded:
# records.tgz (the JSON records only), the logs, and the weights in 15 MiB parts — ClusTR +
# QTRADES's once trained, else the nominal run's (its warm start). If the slice finishes in time,
# tests/test_cuda.py runs after it. `wait` on the same, still-warm machine collects what `start`
# could not wait for. Carried: data/FashionMNIST/raw (Debian's four .gz files), .carry/pyautoattack.
#   scripts/lent_gpu.sh start SECONDS   |   scripts/lent_gpu.sh wait SECONDS
set -u
case "${1:-}" in
  start | wait) mode=$1 ;;
  *) echo "usage: $0 start|wait SECONDS" >&2; exit 2 ;;
esac
budget=${2:?usage: $0 start|wait SECONDS}
work=/tmp/lent-gpu
export CLUSTR_DATA=$PWD/data PYTHONPATH=$PWD/.carry:$PWD PYTHONUNBUFFERED=1 TQDM_MININTERVAL=10
end=$((SECONDS + budget))
if [ "$mode" = start ]; then
  mkdir -p "$work"
  { nvidia-smi; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"; } \
    > "$work/machine.txt" 2>&1
  python3 -c "import clustr_lib.studies, pyautoattack, torch; assert torch.cuda.is_available()" \
    || { cp "$work/machine.txt" "$OUT/"; exit 1; }  # fail before any GPU time is spent waiting
  setsid nohup python3 scripts/fashion32_paper_gpu.py --root "$work" --device cuda \
    > "$work/record.log" 2>&1 < /dev/null &
  echo $! > "$work/pid"
fi
while [ $SECONDS -lt $end ] && [ ! -e "$work/done" ] && kill -0 "$(cat "$work/pid")" 2>/dev/null; do
  sleep 5
done
if [ -e "$work/done" ] && [ $((end - SECONDS)) -gt 60 ]; then
  timeout $((end - SECONDS - 30)) python3 -m pytest -q -p no:cacheprovider -m cuda \
    tests/test_cuda.py > "$work/cuda-tests.log" 2>&1
fi
tar czf "$OUT/records.tgz" --exclude='*/models/*' -C "$work" results 2>/dev/null
cp "$work"/*.log "$work/machine.txt" "$OUT/" 2>/dev/null
models=("$work"/results/*/models)
weights=$(ls "${models[0]}"/*clustr_qtrades*.pt "${models[0]}"/*nominal*.pt 2>/dev/null | head -1)
[ -n "$weights" ] && split -b 15M -d "$weights" "$OUT/$(basename "$weights").part"
ls -la "$OUT"
tail -5 "$work/record.log"
