#!/usr/bin/env bash
# LdmLab on a CUDA machine, in under 10 minutes; ends with one summary line.
#   1. the GPU is seen (nvidia-smi, and LibTorch's torch.cuda.is_available() through `ldmlab info`);
#   2. the tiny parity folders (U-Net, VAE, CLIP text model, the whole SD pipeline, schedulers) pass on the GPU;
#   3. one SD 1.5 U-Net training step (batch 1, 4×64×64) and one 50-step DDIM run with CFG, timed by `ldmlab bench`.
# Needs the CUDA build of LibTorch: the build below switches the package (dotnet build -p:LdmLabTorchBackend=cuda,
# see environment.md, "GPU"); set LDMLAB_SKIP_BUILD=1 when the checkout is already built that way.
set -uo pipefail
cd "$(dirname "$0")/.."
export LDMLAB_DEVICE=${LDMLAB_DEVICE:-cuda} LDMLAB_PROFILE=gpu DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
say() { printf '[gpu-check] %s\n' "$*"; }
fail() { say "FAIL: $*"; echo "gpu-check: FAIL ($*)"; exit 1; }

gpu=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
[ -n "$gpu" ] || fail "nvidia-smi sees no GPU"
say "GPU: $gpu"

if [ "${LDMLAB_SKIP_BUILD:-0}" != 1 ]; then
  say "building with the CUDA LibTorch package"
  timeout 300 dotnet build LdmLab.sln -c Release -v quiet -nologo -clp:ErrorsOnly -p:LdmLabTorchBackend=cuda \
    > "$OUT/build.log" 2>&1 || fail "build (see $OUT/build.log)"
fi

timeout 60 ./ldmlab info > "$OUT/info.txt" 2>&1 || fail "ldmlab info (see $OUT/info.txt)"
grep -q "^device: cuda" "$OUT/info.txt" || fail "LibTorch sees no CUDA device: $(grep '^device' "$OUT/info.txt")"

passed=0; failed=0
for d in tiny-unet tiny-vae tiny-clip-text tiny-pipeline schedulers schedulers-class-defaults; do
  timeout 120 ./ldmlab parity "tests/LdmLab.Tests/fixtures/$d" > "$OUT/parity-$d.txt" 2>&1
  line=$(tail -1 "$OUT/parity-$d.txt")
  say "parity $d: $line"
  p=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1/p' <<<"$line"); f=$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\2/p' <<<"$line")
  if [ -z "$p" ]; then failed=$((failed + 1)); else passed=$((passed + p)); failed=$((failed + f)); fi
done

timeout 360 ./ldmlab bench --json --case sd15-unet-train,sd15-sample-50 --threads 1 --onednn on \
  > "$OUT/bench.json" 2> "$OUT/bench.log" || fail "bench (see $OUT/bench.log)"
times=$(python3 -c '
import json, sys
r = {x["case"]: x["median_ms"] for x in json.load(open(sys.argv[1]))["results"]}
print(f"SD1.5 U-Net train step {r[\"sd15-unet-train\"]:.0f} ms, 50-step CFG sampling {r[\"sd15-sample-50\"] / 1000:.2f} s")
' "$OUT/bench.json") || fail "bench output unreadable (see $OUT/bench.json)"

status=OK; [ "$failed" -eq 0 ] || status=FAIL
echo "gpu-check: $status | $gpu | parity $passed passed, $failed failed on $LDMLAB_DEVICE | $times"
[ "$failed" -eq 0 ]
