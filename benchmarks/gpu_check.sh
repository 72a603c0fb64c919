#!/usr/bin/env bash
# Issue 13's accelerator figures in one run (about 8 minutes on one H100), from the repo root:
#
#   bash benchmarks/gpu_check.sh
#
# What the GPU image lacks (ml_collections, tensorboardX, trl, datasets, dill, multiprocess)
# travels as wheels in the ignored folder .whl/; the device command installs them first:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. && bash benchmarks/gpu_check.sh
#
# Everything printed goes to $OUT/gpu_log.txt too ($OUT: the device tool's folder of files
# that come back; /tmp/gpu_check_out when unset). Parts run in order of importance, each under
# `timeout`; a part that fails or times out is reported and the next one runs. A part is
# skipped when the time left of GPU_CHECK_BUDGET (seconds, default 480) is under its floor.
#
#   a1  vs_trl.py W1,W2, 2 rounds: grpo_jax on the GPU at jax's default matmul precision
#       (float32 dots may use TF32), TRL on the GPU (vs_trl.py --trl_device=auto; torch keeps
#       float32 matmuls in full float32, TF32 off by default).
#   a2  the same with grpo_jax at strict float32 (JAX_DEFAULT_MATMUL_PRECISION=highest): the
#       float32-for-float32 comparison of issue 13.
#   b   grpo_jax alone, W1, bfloat16 compute (vs_trl.py --compute_dtype=bfloat16 --skip_trl).
#   c   rl_step.py's W2 populations, 1 to 1024 seeds as one vmapped program (rl_step.py has no
#       flag for the population sizes: bench_w2 is called with them; switch question skipped).
#   e   the W1 comparison on 2 of the host's CPU cores (taskset, no GPU): a second CPU type
#       beside the development machine's, for issue 13's "AVX2 and AVX-512 alike".
#   d1  phases.py W1 float32 (default precision), d2 bfloat16, d3 float32 at precision highest,
#       each with --skip_step: the whole step of d1 / d2 / d3 is the very program a1 / b / a2
#       time (same workload, dtype and precision), so its compile (the longest) is not repeated.
#
# Expected: a1 and a2 ~1.5-2 min each (grpo_jax compiles of W1 and W2 dominate), b ~1 min,
# c ~1.5 min (4 compiles), d1-d3 ~40 s each; d3 is the first to be skipped if compiles are slow.
# The script stops itself by about GPU_CHECK_BUDGET + 10 s whatever happens.
#
# GPU_CHECK_PARTS="a1 c" runs only those parts. GPU_CHECK_SMOKE=1 shrinks every count (1 step,
# 1 round, no warm-up) and runs W2 where W1 is named, to check on a CPU that the command lines
# parse and run.
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
LOG=$OUT/gpu_log.txt
export PYTHONUNBUFFERED=1
export PYTHONPATH=${PYTHONPATH:-.}
case ":$PYTHONPATH:" in *":.:"*) ;; *) export PYTHONPATH=$PYTHONPATH:. ;; esac
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-540}

if [[ ${GPU_CHECK_SMOKE:-0} == 1 ]]; then
  WL_BOTH=W2 WL_1=W2
  CNT_TRL="--rounds=1 --steps=1 --warmup=0"
  CNT_BF16="--rounds=1 --steps=1 --warmup=0"
  CNT_CPU="--rounds=1 --steps=1 --warmup=0"
  POP_STEPS=1 POP_REPEATS=1 POPS="1,2"
  PH_REPEATS=1
else
  WL_BOTH=W1,W2 WL_1=W1
  CNT_TRL="--rounds=2"                          # default steps: W1 3, W2 20; warm-up 1
  CNT_BF16="--rounds=2 --steps=10"
  CNT_CPU="--rounds=2 --steps=3 --warmup=1"
  # 1024 second, so that a timeout loses the middle of the curve rather than its end.
  POP_STEPS=10 POP_REPEATS=3 POPS="1,1024,16,128"
  PH_REPEATS=5
fi

# rl_step.py's W2 population table for the sizes in POPS (its main() has no flag for them).
POP_PY='
import os, sys, warnings
sys.path.insert(0, "benchmarks")
import common, rl_step
warnings.filterwarnings("ignore", message=".*donated buffers.*")
steps, repeats = int(os.environ["POP_STEPS"]), int(os.environ["POP_REPEATS"])
pops = tuple(int(s) for s in os.environ["POPS"].split(","))
print("machine:", common.describe_machine())
print(f"settings: workload=W2 steps={steps} repeats={repeats} populations={pops}")
rl_step.bench_w2(steps, repeats, populations=pops)
'

RESULTS=()
START=$SECONDS

# part NAME CAP FLOOR CMD...: run CMD under `timeout min(CAP, time left)`, unless less than
# FLOOR seconds of the budget are left.
part() {
  local name=$1 cap=$2 floor=$3
  shift 3
  if [[ -n ${GPU_CHECK_PARTS:-} && " $GPU_CHECK_PARTS " != *" ${name%%-*} "* ]]; then
    return
  fi
  local left=$((BUDGET - (SECONDS - START)))
  local t=$((cap < left ? cap : left))
  if ((left < floor)); then
    echo "=== [$name] skipped: ${left} s of the ${BUDGET} s budget left (needs ${floor})"
    RESULTS+=("$name skipped")
    return
  fi
  echo
  local cmd="$*"
  cmd=${cmd//$'\n'/ }
  ((${#cmd} > 300)) && cmd="${cmd:0:300}..."
  echo "=== [$name] $(date -u +%T) (t=$((SECONDS - START)) s), timeout ${t} s: $cmd"
  local s=$SECONDS
  timeout -k 10 "$t" "$@"
  local rc=$?
  local note=""
  ((rc == 124 || rc == 137)) && note=" (timed out)"
  echo "=== [$name] rc=$rc$note after $((SECONDS - s)) s"
  RESULTS+=("$name rc=$rc$note $((SECONDS - s))s")
}

main() {
  echo "=== gpu_check $(date -u '+%F %T') UTC; budget ${BUDGET} s; smoke=${GPU_CHECK_SMOKE:-0}"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'n/a (no .git here)')"
  # The working tree travels, uncommitted edits included: this fingerprint ties the figures to
  # a code state (run the same line at home to compare).
  echo "code fingerprint: $(printf '%s\n' grpo_jax/*.py benchmarks/*.py | LC_ALL=C sort \
    | xargs cat | sha1sum | cut -c1-12)" \
    "(the files in C-locale order, concatenated, sha1)"
  nvidia-smi -L 2>&1 || echo "nvidia-smi: not available"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  echo "nproc $(nproc); $(uptime)"
  timeout 120 "$PY" -c '
import platform, importlib
print("python", platform.python_version())
for m in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "trl", "datasets",
          "accelerate", "huggingface_hub", "ml_collections", "tensorboardX"):
    try:
        print(f"{m} {importlib.import_module(m).__version__}")
    except Exception as e:
        print(f"{m} MISSING: {type(e).__name__}: {e}")
import jax, torch
print("jax devices:", jax.devices())
print("torch cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
' 2>&1 | grep -v -i "warning"
  echo "XLA_FLAGS=${XLA_FLAGS:-} JAX_DEFAULT_MATMUL_PRECISION=${JAX_DEFAULT_MATMUL_PRECISION:-}"

  part a1-vs_trl-f32-default-trl-gpu 170 60 \
    "$PY" benchmarks/vs_trl.py --workloads=$WL_BOTH $CNT_TRL
  part a2-vs_trl-f32-highest-trl-gpu 170 60 \
    env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" benchmarks/vs_trl.py --workloads=$WL_BOTH $CNT_TRL
  part b-vs_trl-W1-bf16-jax-only 100 40 \
    "$PY" benchmarks/vs_trl.py --workloads=$WL_1 --compute_dtype=bfloat16 --skip_trl $CNT_BF16
  part c-rl_step-W2-populations 150 60 \
    env POP_STEPS=$POP_STEPS POP_REPEATS=$POP_REPEATS POPS=$POPS "$PY" -c "$POP_PY"
  lscpu | grep -E "Model name|Flags" | cut -c1-400
  part e-vs_trl-W1-2-cpu-cores 110 60 \
    env CUDA_VISIBLE_DEVICES= JAX_PLATFORMS=cpu taskset -c 0,1 "$PY" benchmarks/vs_trl.py \
    --workloads=$WL_1 --trl_device=cpu --torch_threads=2 $CNT_CPU
  part d1-phases-W1-f32 90 35 \
    "$PY" benchmarks/phases.py --workload=$WL_1 --compute_dtype=float32 --repeats=$PH_REPEATS \
    --skip_step
  part d2-phases-W1-bf16 90 35 \
    "$PY" benchmarks/phases.py --workload=$WL_1 --compute_dtype=bfloat16 --repeats=$PH_REPEATS \
    --skip_step
  part d3-phases-W1-f32-highest 90 35 \
    env JAX_DEFAULT_MATMUL_PRECISION=highest "$PY" benchmarks/phases.py --workload=$WL_1 \
    --compute_dtype=float32 --repeats=$PH_REPEATS --skip_step

  echo
  echo "=== summary (total $((SECONDS - START)) s):"
  printf '  %s\n' "${RESULTS[@]}"
}

main 2>&1 | tee "$LOG"
