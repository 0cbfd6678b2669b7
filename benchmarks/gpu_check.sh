#!/usr/bin/env bash
# One-shot GPU check of the Qwen2.5-VL-3B path, for one H100 / H200, no network, under 8 min:
#   1. environment facts (nvidia-smi, Python and library versions)
#   2. a 3B model with random weights (bf16, published configuration), built once on the GPU
#   3. planner latency: fast and slow plans, batch 1 and 8, reference vs fast decoding vs
#      plain generate() (benchmarks/bench_planner_gpu.py), then the compiled fast path
#   4. SFT throughput: 50 steps, tokens/s and MFU (benchmarks/bench_sft_gpu.py)
#   5. one RFT step split into sampling / scoring / update (benchmarks/bench_rft_gpu.py)
# Writes gpu_check.json, gpu_check.md and gpu_check.log into $OUT if set, else into OUTDIR.
# A part that fails or runs out of its time is recorded as such; the others still run.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]                  # on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu --tiny OUTDIR       # plumbing smoke test on a CPU
#
# Needs the repository's sources (run from a checkout; src/ goes on PYTHONPATH) and its Python
# dependencies; nothing is installed here. Missing packages can travel as wheels: install them
# first (pip install --no-index --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site) - see
# benchmarks/README.md for the list. Part time limits (seconds) can be changed with
# T_MODEL, T_PLANNER, T_COMPILED, T_SFT, T_RFT; every part runs with $PYTHON (default python3).
set -uo pipefail

CPU=0
TINY=0
OUTDIR=""
for arg in "$@"; do
  case "$arg" in
    --cpu) CPU=1 ;;
    --tiny) TINY=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    -*) echo "unknown option $arg" >&2; exit 2 ;;
    *) OUTDIR="$arg" ;;
  esac
done
DEST="${OUT:-$OUTDIR}"
if [ -z "$DEST" ]; then
  echo "set OUT or give an output folder" >&2
  exit 2
fi
mkdir -p "$DEST"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
WORK="$(mktemp -d)"  # the 3B model (7.5 GB) stays here, not in $DEST
trap 'rm -rf "$WORK"' EXIT
LOG="$DEST/gpu_check.log"
: >"$LOG"

if [ "$CPU" = 1 ]; then
  DEVICE=cpu DTYPE=float32 REPEATS=2 BATCHES=1,2 SFT_STEPS=2 SFT_BATCH=2 GROUP=2 RFT_CAP=16
  SCALE=4  # a shared CPU: generous time limits
else
  DEVICE=cuda DTYPE=bfloat16 REPEATS=5 BATCHES=1,8 SFT_STEPS=50 SFT_BATCH=4 GROUP=8 RFT_CAP=256
  SCALE=1
fi
PRESET=qwen2.5-vl-3b
[ "$TINY" = 1 ] && PRESET=tiny
T_MODEL=$((${T_MODEL:-75} * SCALE))
T_PLANNER=$((${T_PLANNER:-140} * SCALE))
T_COMPILED=$((${T_COMPILED:-90} * SCALE))
T_SFT=$((${T_SFT:-70} * SCALE))
T_RFT=$((${T_RFT:-85} * SCALE))
START=$(date +%s)
PARTS="$WORK/parts.tsv"
: >"$PARTS"

part() {  # part NAME TIMEOUT CMD...: run with a time limit, log it, record status and time
  local name="$1" limit="$2"
  shift 2
  local t0=$(date +%s)
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local code=$?
  local t1=$(date +%s)
  printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$((t1 - t0))" "$limit" >>"$PARTS"
  echo "=== $name: exit $code after $((t1 - t0))s" | tee -a "$LOG"
}

# 1. environment
part env 60 "$PY" - "$WORK/env.json" "$DEVICE" <<'EOF'
import json, os, platform, subprocess, sys
facts = {"python": sys.version.split()[0], "platform": platform.platform(),
         "cpus": os.cpu_count(), "device": sys.argv[2]}
try:
    q = "name,memory.total,driver_version,clocks.max.sm,power.limit"
    facts["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError) as e:
    facts["nvidia_smi"] = f"unavailable: {e}"
import importlib.metadata as md
for pkg in ("torch", "transformers", "accelerate", "peft", "tokenizers", "safetensors",
            "pydantic", "numpy", "pillow"):
    try:
        facts[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
        facts[pkg] = None
import torch
facts["cuda"] = torch.version.cuda
facts["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    facts["gpu"] = torch.cuda.get_device_name(0)
try:
    facts["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                     text=True, timeout=10).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    facts["commit"] = None
json.dump(facts, open(sys.argv[1], "w"), indent=2)
print(json.dumps(facts, indent=2))
EOF

# 2. one model for every part (random weights, geometry-initialised action rows)
part model "$T_MODEL" "$PY" - "$WORK/model" "$PRESET" "$DEVICE" "$DTYPE" <<'EOF'
import sys, time
sys.path.insert(0, "benchmarks")
import torch
from autovla.model.backbone import quiet_transformers
from autovla.model.checkpoint import build_model
from bench_planner_gpu import codebook
quiet_transformers()
out, preset, device, dtype = sys.argv[1:5]
t0 = time.perf_counter()
vla = build_model(preset, codebook(2048), dtype=getattr(torch, dtype), device=device,
                  random_weights=True, action_init="geometry")
t1 = time.perf_counter()
vla.save_pretrained(out)
print(f"built in {t1 - t0:.1f} s, saved in {time.perf_counter() - t1:.1f} s")
EOF

# 3. planner latency (eager paths and generate(), then the compiled fast path)
part planner "$T_PLANNER" "$PY" benchmarks/bench_planner_gpu.py --model "$WORK/model" \
  --device "$DEVICE" --dtype "$DTYPE" --repeats "$REPEATS" --batch-sizes "$BATCHES" \
  --decodings reference,fast --json "$WORK/planner.json"
part planner_compiled "$T_COMPILED" "$PY" benchmarks/bench_planner_gpu.py --model "$WORK/model" \
  --device "$DEVICE" --dtype "$DTYPE" --repeats "$REPEATS" --batch-sizes "$BATCHES" \
  --decodings fast+compile --no-generate --json "$WORK/planner_compiled.json"

# 4. SFT throughput
part sft "$T_SFT" "$PY" benchmarks/bench_sft_gpu.py --model "$WORK/model" --device "$DEVICE" \
  --steps "$SFT_STEPS" --batch-size "$SFT_BATCH" --json "$WORK/sft.json"

# 5. one RFT step
part rft "$T_RFT" "$PY" benchmarks/bench_rft_gpu.py --model "$WORK/model" --device "$DEVICE" \
  --group-size "$GROUP" --reasoning-tokens "$RFT_CAP" --json "$WORK/rft.json"

"$PY" benchmarks/gpu_check_report.py "$WORK" "$DEST" --seconds "$(($(date +%s) - START))" \
  --preset "$PRESET" 2>&1 | tee -a "$LOG"
