#!/usr/bin/env bash
# One device call's worth of GPU measurements (DEVELOPERS.md "A lent GPU"), run on the lent machine as
#   bash .gpu/remote.sh bash bench/gpu-session.sh "$OUT"
# after `npm ci && npm run build && bash ../shared/gpu/pack.sh` here, with carry [".gpu", "dist"].
# 1. tunes the fused forward's blocking for this adapter on a dense problem (stored in OUT/tuning.json);
# 2. runs bench/gpu.ts with that tuning: forward vs SDPA and FlexAttention, then forward+backward,
#    after a sweep of the backward's blocking on the dense case.
set -uo pipefail
out=${1:?usage: gpu-session.sh OUT}
node dist/src/cli/main.js profile --tune --tune-rounds 2 --backend webgpu --pattern dense --shape 4096 --heads 32 --dim 64 \
  --tuning-file "$out/tuning.json" --repeat 3 >"$out/tune.txt" 2>&1
tail -4 "$out/tune.txt"
tunings='[{"rm":4,"tx":4,"maxRows":64,"maxKeys":32},{"rm":2,"tx":8,"maxRows":64,"maxKeys":32},{"rm":4,"tx":8,"maxRows":64,"maxKeys":32},{"rm":2,"tx":4,"maxRows":32,"maxKeys":32},{"rm":8,"tx":4,"maxRows":64,"maxKeys":32},{"rm":2,"tx":16,"maxRows":64,"maxKeys":64},{"rm":4,"tx":4,"maxRows":32,"maxKeys":16}]'
TILEWISE_TUNING="$out/tuning.json" node dist/bench/gpu.js --backward --bwd-tunings "$tunings" --out "$out" 2>&1 | tee "$out/gpu-log.txt"
