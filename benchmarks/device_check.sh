#!/usr/bin/env bash
# The one command for a GPU machine: build, selfcheck, test, benchmark, train side by side, report.
#
#   benchmarks/device_check.sh [--cpu] [--quick] [--parts LIST]
#
# Parts, in order, each under its own time limit (a failing or timed-out part is reported and
# the rest still runs; the whole run stays under DC_TOTAL_S, default 470 s):
#   env            machine, versions, commit
#   install        pip install --no-index --no-deps --no-build-isolation -e .  (offline; builds
#                  fer_fast._C, CUDA too, with the build tools already installed)
#   selfcheck      python -m fer_fast selfcheck --device cuda (CPU: --device cpu --quick): every
#                  backend's parity with the eager reference and its speed; writes selfcheck.json
#                  and selfcheck.txt (its printed table) to $OUT as soon as it ends
#   tests          pytest tests/ (GPU tests run on a GPU)
#   bench          pytest-benchmark, one timed part per file, most important first:
#                  bench_step (training step), bench_augment, bench_block, bench_conv
#   train          python -m fer_fast.train: the eager reference and each fast model backend,
#                  same synthetic data and seed, a few epochs each
#   scaling        benchmarks/scaling.py: data-parallel training images/s under torchrun with
#                  1 process and with every GPU of the machine (skipped, with its reason, on a
#                  machine with one GPU; CPU mode: 1 and 2 processes with gloo)
#   bench_compile  the torch.compile (max-autotune) step provider, last: its autotuning is the
#                  slowest part and the one most likely to run out of time
# After every part, device_check.json (everything so far, the selfcheck's rows included) and
# device_check.md (its tables) are rewritten in $OUT (default ./device_out), beside
# device_check.log; so a run cut short still leaves its results. The tables are printed at the
# end, and after them the headline numbers (selfcheck verdict, training step, augmentation).
# `python benchmarks/report.py save $OUT` stores the result in benchmarks/results/.
#
# --cpu     CPU mode (automatic without a CUDA GPU): CPU sizes, the Triton interpreter for tests.
# --quick   smoke sizes (the CI test of this script): tiny benchmarks, one short epoch.
# --parts   comma-separated subset of the parts above (default: all).
# Environment: PYTHON (default python3; every part runs through it), OUT, DC_TOTAL_S, DC_TESTS
# (pytest targets of the tests part, default tests/), DC_BENCH_FILTER (a pytest -k expression
# selecting benchmarks).
set -u
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
MODE=""
QUICK=0
PARTS="env,install,selfcheck,tests,bench,train,scaling,bench_compile"
COMMAND="benchmarks/device_check.sh $*"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --quick) QUICK=1 ;;
    --parts) PARTS="$2"; shift ;;
    --parts=*) PARTS="${1#--parts=}" ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "device_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for part in ${PARTS//,/ }; do
  case "$part" in
    env|install|selfcheck|tests|bench|train|scaling|bench_compile) ;;
    *) echo "device_check.sh: unknown part '$part' (parts: env, install, selfcheck, tests, bench," \
         "train, scaling, bench_compile)" >&2; exit 2 ;;
  esac
done
if [ -z "$MODE" ]; then
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    MODE=gpu
  else
    MODE=cpu
  fi
fi

OUT=${OUT:-./device_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device_check.XXXXXX")
LOG="$OUT/device_check.log"
rm -f "$OUT/device_check.json" "$OUT/device_check.md" "$OUT/selfcheck.json" "$OUT/selfcheck.txt"
: > "$LOG"
: > "$WORK/parts.tsv"
: > "$WORK/train_runs.tsv"
: > "$WORK/train_configs.txt"
START=$(date +%s)
DEADLINE=$((START + ${DC_TOTAL_S:-470}))
REPORT_RESERVE=15   # seconds kept for the report at the end

# Time budgets (seconds) per part and mode.
if [ "$MODE" = gpu ]; then
  B_INSTALL=90; B_SELFCHECK=150; B_TESTS=90
  B_STEP=60; B_AUGMENT=25; B_BLOCK=40; B_CONV=50; B_TRAIN=35
  B_SCALING=120; B_COMPILE=150
  TRAIN_ARGS="--epochs 3 --width 1 --synthetic-sizes 1920,512,512"
elif [ "$QUICK" = 1 ]; then
  B_INSTALL=300; B_SELFCHECK=60; B_TESTS=300
  B_STEP=60; B_AUGMENT=60; B_BLOCK=60; B_CONV=60; B_TRAIN=60
  B_SCALING=120; B_COMPILE=60
  TRAIN_ARGS="--epochs 1 --width 0.0625 --synthetic-sizes 64,32,32 --eval-batch-size 32"
else
  B_INSTALL=300; B_SELFCHECK=240; B_TESTS=600
  B_STEP=120; B_AUGMENT=60; B_BLOCK=120; B_CONV=120; B_TRAIN=120
  B_SCALING=240; B_COMPILE=60
  TRAIN_ARGS="--epochs 2 --width 0.125 --synthetic-sizes 256,64,64"
fi
BENCH_ARGS=()
SELFCHECK_ARGS=(--device cuda)
[ "$QUICK" = 1 ] && BENCH_ARGS+=(--bench-quick)
if [ "$MODE" = cpu ]; then SELFCHECK_ARGS=(--device cpu --quick)
elif [ "$QUICK" = 1 ]; then SELFCHECK_ARGS+=(--quick); fi
COLLECT=("$PY" benchmarks/report.py collect --work "$WORK" --out "$OUT" --mode "$MODE"
         --command "$COMMAND")
[ "$QUICK" = 1 ] && COLLECT+=(--quick)

wants() { case ",$PARTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

# run_part NAME BUDGET CMD...: run CMD under min(BUDGET, time left), log it, record the outcome.
run_part() {
  local name=$1 budget=$2; shift 2
  local left=$((DEADLINE - $(date +%s) - REPORT_RESERVE))
  local limit=$((budget < left ? budget : left))
  if [ "$limit" -lt 5 ]; then
    printf '%s\t-2\t0\t%s\n' "$name" "$limit" >> "$WORK/parts.tsv"
    echo "=== $name: no time left" | tee -a "$LOG"
    return
  fi
  echo "=== $name (limit ${limit} s)" | tee -a "$LOG"
  local t0 rc
  t0=$(date +%s)
  # SIGINT first: pytest then still writes its junit XML and benchmark JSON
  timeout -s INT --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  cat "$WORK/$name.log" >> "$LOG"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >> "$WORK/parts.tsv"
  echo "=== $name: rc $rc after $(($(date +%s) - t0)) s" | tee -a "$LOG"
  "${COLLECT[@]}" 2>> "$LOG"  # the results so far, in case a later part outlives the machine
}

skip_part() { printf '%s\t-1\t0\t0\n' "$1" >> "$WORK/parts.tsv"; }

# The benchmarks never run Triton's interpreter; the tests choose it themselves (tests/conftest.py).
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

if wants env; then
  run_part env 30 bash -c "\"$PY\" benchmarks/report.py env > \"$WORK/env.json\"; nvidia-smi || true"
else skip_part env; fi

if wants install; then
  run_part install "$B_INSTALL" env PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -e .
else skip_part install; fi

if wants selfcheck; then
  run_part selfcheck "$B_SELFCHECK" "$PY" -m fer_fast selfcheck "${SELFCHECK_ARGS[@]}" \
    --json "$OUT/selfcheck.json"
  cp "$WORK/selfcheck.log" "$OUT/selfcheck.txt" 2>/dev/null
else skip_part selfcheck; fi

if wants tests; then
  # On the GPU machine's 16 cores the tests' Triton compiles run in parallel (pytest-xdist).
  XDIST=()
  if [ "$MODE" = gpu ] && "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n 8); fi
  # shellcheck disable=SC2086
  run_part tests "$B_TESTS" "$PY" -m pytest ${DC_TESTS:-tests/} -q -p no:cacheprovider \
    "${XDIST[@]}" --ignore=tests/test_device_check.py --junitxml="$WORK/tests.xml"
else skip_part tests; fi

# bench_part NAME FILE BUDGET [pytest args]: benchmarks/test_bench_FILE.py as a timed part.
bench_part() {
  local name=$1 file=$2 budget=$3; shift 3
  run_part "$name" "$budget" "$PY" -m pytest "benchmarks/test_bench_$file.py" -q \
    -p no:cacheprovider -rs "${BENCH_ARGS[@]}" "$@" \
    --benchmark-json="$WORK/$name.json" --junitxml="$WORK/$name.xml"
}
K_ARGS=()
[ -n "${DC_BENCH_FILTER:-}" ] && K_ARGS=(-k "$DC_BENCH_FILTER")

if wants bench; then
  bench_part bench_step step "$B_STEP" -k "not compile${DC_BENCH_FILTER:+ and ($DC_BENCH_FILTER)}"
  bench_part bench_augment augment "$B_AUGMENT" "${K_ARGS[@]}"
  bench_part bench_block block "$B_BLOCK" "${K_ARGS[@]}"
  bench_part bench_conv conv "$B_CONV" "${K_ARGS[@]}"
else skip_part bench; fi

if wants train; then
  run_part train-configs 60 bash -c \
    "\"$PY\" benchmarks/report.py train-configs --mode $MODE > \"$WORK/train_configs.txt\""
  while read -r name flags; do
    [ -n "$name" ] || continue
    printf '%s\t%s\n' "$name" "$flags" >> "$WORK/train_runs.tsv"
    # shellcheck disable=SC2086
    run_part "train-$name" "$B_TRAIN" "$PY" -m fer_fast.train $TRAIN_ARGS $flags --seed 0 \
      --no-progress --out "$WORK/train-$name"
  done < "$WORK/train_configs.txt"
else skip_part train; fi

if wants scaling; then
  SCALE_ARGS=(--device cpu --procs 1,2 --epochs 2)
  [ "$QUICK" = 1 ] && SCALE_ARGS=(--device cpu --procs 1,2 --epochs 1 -- --preset quick \
    --synthetic-sizes 128,32,32)
  NGPU=0
  [ "$MODE" = gpu ] && NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null)
  if [ "$MODE" = gpu ] && [ "${NGPU:-0}" -lt 2 ]; then
    echo "skipped: ${NGPU:-0} GPU(s) here; data-parallel scaling needs 2 or more" \
      | tee "$WORK/scaling.log" >> "$LOG"
    skip_part scaling
  else
    [ "$MODE" = gpu ] && SCALE_ARGS=(--device cuda --procs "1,$NGPU" --epochs 2)
    run_part scaling "$B_SCALING" "$PY" benchmarks/scaling.py --json "$WORK/scaling.json" \
      "${SCALE_ARGS[@]}"
  fi
else skip_part scaling; fi

if wants bench_compile; then
  bench_part bench_compile step "$B_COMPILE" -k compile
else skip_part bench_compile; fi

"${COLLECT[@]}" --print 2>> "$LOG"
rc=$?
rm -rf "$WORK"
exit $rc
