#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md): install the kit, then every GPU path, the benchmarks
# and the real recipe in one bounded run, with the evidence in $OUT/gpu_check.json and gpu_check.log.
#
#   make gpu-check            # full: <= 9.5 minutes on one H200 (see docs/gpu.md, "Time")
#   make gpu-check QUICK=1    # GPU tests + the batch-8 benchmark (eager, CUDA graphs), ~4 minutes
#   make gpu-check CPU=1      # dry run on the CPU: tiny sizes, CUDA-only checks reported as skipped
#
# Every check runs in its own subshell under `timeout`, clipped to what is left of the time budget;
# a failing check is recorded and the next one runs. Exit status: 0 when no check failed.
# Environment: OUT (./gpu-check-out), KIT (.gpu-kit), PYTHON (.venv/bin/python if present, else
# python3), BUDGET_S (whole run: 560 full, 240 quick, 300 cpu), RECIPE_S (training wall budget, 240),
# KEEP_WORK=1 (keep the scratch folder: runs, decoded CSV), FER_CSV (FER2013 CSV when there is no
# kit; default ../shared/fer2013/fer2013_dev.csv.gz if present),
# CHECKS (comma-separated subset, e.g. CHECKS=install,recipe,bench_gpu_b64 for a second command on a warm
# machine: the installed kit and the prepared data in .gpu-check-data/ are reused).
set -uo pipefail  # no -e: a failing check must not stop the others
cd "$(dirname "$0")/.."

CPU=${CPU:-0}
QUICK=${QUICK:-0}
MODE=full
[[ $QUICK == 1 ]] && MODE=quick
[[ $CPU == 1 ]] && MODE=cpu
case $MODE in
  full) BUDGET_S=${BUDGET_S:-560} ;;
  quick) BUDGET_S=${BUDGET_S:-240} ;;
  cpu) BUDGET_S=${BUDGET_S:-300} ;;
esac
RECIPE_S=${RECIPE_S:-240}
KIT=${KIT:-.gpu-kit}
if [[ -z ${PYTHON:-} ]]; then
  PYTHON=python3
  [[ -x .venv/bin/python ]] && PYTHON=$(pwd)/.venv/bin/python
fi
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
mkdir -p "$WORK/logs" "$WORK/figures"
JSON=$OUT/gpu_check.json
DATA=$WORK/fer2013
CHECKS=${CHECKS:-}
[[ -n $CHECKS && ,$CHECKS, == *,recipe,* ]] && CHECKS=$CHECKS,data  # the recipe trains on the prepared data
export CPU QUICK MODE PYTHON OUT WORK DATA KIT RECIPE_S CHECKS
# Progress bars every 10 s only: the log stays readable and small.
export TQDM_MININTERVAL=10 PYTHONUNBUFFERED=1 DS_BUILD_OPS=0 PIP_BREAK_SYSTEM_PACKAGES=1

exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
echo "gpu-check: mode $MODE, budget ${BUDGET_S}s, python $PYTHON, out $OUT, work $WORK, $(date -u)"

report() { "$PYTHON" scripts/gpu_check_report.py "$JSON" "$@"; }
figures() { "$PYTHON" scripts/gpu_check_report.py - "$@"; }  # figures bench-gpu|last-json FILE

# run_check NAME LIMIT_S COMMAND...: COMMAND (a function below) in a subshell under timeout, clipped to
# the budget left; its output goes to the log and to $WORK/logs/NAME.out, its figures (if any) are
# read from $WORK/figures/NAME.json. Exit 77 means "skipped" (the last output line says why).
run_check() {
  local name=$1 limit=$2
  shift 2
  if [[ -n $CHECKS && ,$CHECKS, != *,$name,* ]]; then
    report skip "$name" "not selected (CHECKS=$CHECKS)"
    return 0
  fi
  local left=$((DEADLINE - $(date +%s)))
  if ((left < 15)); then
    report skip "$name" "out of the ${BUDGET_S}s time budget"
    return 0
  fi
  ((limit > left)) && limit=$left
  local started
  started=$(date +%s.%N)
  echo "=== $name (limit ${limit}s) $(date -u +%T)"
  (timeout -k 20 "$limit" bash -c '"$@"' _ "$@") 2>&1 | tee "$WORK/logs/$name.out"
  local rc=${PIPESTATUS[0]}
  report add "$name" --rc "$rc" --started "$started" --output "$WORK/logs/$name.out" \
    --figures "$WORK/figures/$name.json"
  return 0
}

skip() { echo "$1"; exit 77; }  # checks run in their own bash: this ends the check, not the script
have_cuda() { [[ $("$PYTHON" -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null) == True ]]; }

# The CPU dry run only lists what the kit would install: it leaves the development environment alone.
check_install() {
  local args=()
  [[ $MODE == cpu ]] && args+=(--check)
  [[ -d $KIT/wheels ]] && args+=("$KIT")
  "$PYTHON" scripts/gpu_kit_install.py "${args[@]}"
}

# FER2013 for the recipe: the kit's copy (decoded, checksums verified), else FER_CSV; synthetic faces
# in CPU mode (tiny sizes) or when there is no FER2013 at all (the recipe then reports a skip).
check_data() {
  local csv=${FER_CSV:-} cached=""
  local shared=../shared/fer2013/fer2013_dev.csv.gz
  if [[ -f $KIT/fer2013.xz ]]; then
    # Prepared once per kit data (checksum-keyed): a second command on a warm machine reuses it.
    cached=.gpu-check-data/$("$PYTHON" -c 'import json,sys; print(json.load(open(sys.argv[1]))["csv_sha256"][:16])' "$KIT/fer2013.json")
    csv=$WORK/fer2013.csv
  elif [[ -z $csv && -f $shared ]]; then
    csv=$shared
  fi
  if [[ $MODE == cpu || -z $csv ]]; then
    # The kit's data is still decoded and verified in the dry run; training uses tiny synthetic data.
    [[ -n $cached ]] && { "$PYTHON" scripts/gpu_fer_codec.py decode "$KIT/fer2013" "$csv" || return 1; }
    csv=$WORK/synth.csv cached=""
    emotionnet-synth "$csv" --rows 300 --seed 0 || return 1
  fi
  if [[ -n $cached && -f $cached/manifest.json ]]; then
    echo "prepared FER2013 reused from $cached"
    ln -sfn "$(pwd)/$cached" "$DATA" || return 1
    csv=$cached
  else
    [[ -n $cached ]] && { "$PYTHON" scripts/gpu_fer_codec.py decode "$KIT/fer2013" "$csv" || return 1; }
    emotionnet-prep "$csv" "$DATA" || return 1
    if [[ -n $cached ]]; then
      mkdir -p .gpu-check-data && rm -rf "$cached" "$cached.tmp" && cp -r "$DATA" "$cached.tmp" && mv "$cached.tmp" "$cached"
    fi
  fi
  echo "$csv" > "$WORK/data_source"
  "$PYTHON" - "$DATA/manifest.json" "$csv" > "$WORK/figures/data.json" <<'EOF'
import json, sys
splits = json.load(open(sys.argv[1]))["splits"]
print(json.dumps({"source": sys.argv[2], **{f"{k}_rows": v["rows"] for k, v in splits.items()}}))
EOF
}

# The GPU tests, one pytest per file in parallel (they only need correctness, not a quiet GPU); one
# pytest for all in the CPU dry run, where every test skips and start-up is the cost.
check_pytest() {
  local files=(tests/gpu/test_*.py) pids=() rc=0 i
  [[ $MODE == cpu ]] && files=(tests/gpu)
  for i in "${!files[@]}"; do
    "$PYTHON" -m pytest -m gpu -p no:cacheprovider -q "${files[$i]}" --junitxml="$WORK/junit_$i.xml" \
      > "$WORK/logs/pytest_$i.out" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    wait "${pids[$i]}"
    local code=$?
    cat "$WORK/logs/pytest_$i.out"
    # 5: every test deselected or none collected, which -m gpu can give on a file; not a failure.
    ((code != 0 && code != 5)) && rc=1
  done
  return $rc
}

check_bench_gpu() {  # check_bench_gpu NAME BATCH
  # The recipe's training step as the Trainer runs it (next(loader) + Trainer.train_step), per compile mode.
  local args=(--precisions bf16 --channels-last off --steps 50 --warmup 10)
  case $MODE in
    full) args+=(--compile eager,default,reduce-overhead) ;;
    quick) args+=(--compile eager,reduce-overhead) ;;  # fewer compilations
    cpu) args=(--cpu --precisions bf16 --channels-last off --compile eager --steps 1 --warmup 1) ;;
  esac
  "$PYTHON" -m benchmarks.bench_gpu --batch-sizes "$2" "${args[@]}" | tee "$WORK/$1.txt"
  local rc=${PIPESTATUS[0]}
  figures bench-gpu "$WORK/$1.txt" > "$WORK/figures/$1.json"
  return "$rc"
}

check_bench_augment() {
  [[ -f benchmarks/bench_augment.py ]] || skip "benchmarks/bench_augment.py not present"
  local args=(--doc "")  # print only: docs/benchmarks.md is updated by hand from the JSON
  [[ $MODE == cpu ]] && args+=(--device cpu --batch-sizes 8 --rounds 1 --seconds 0.05)
  "$PYTHON" -m benchmarks.bench_augment "${args[@]}" | tee "$WORK/bench_augment.txt"
  local rc=${PIPESTATUS[0]}
  figures last-json "$WORK/bench_augment.txt" > "$WORK/figures/bench_augment.json"
  return "$rc"
}

check_recipe() {  # check_recipe BUDGET_S
  [[ -f $DATA/manifest.json ]] || skip "no prepared data (the data check failed)"
  if [[ $MODE == cpu ]]; then
    # The same driver on the tiny test model: exercises the run, the figures, bundling and the tar.
    "$PYTHON" scripts/gpu_recipe.py --data "$DATA" --work "$WORK" --out "$OUT" --budget-s "$1" \
      --figures "$WORK/figures/recipe.json" --config tests/configs/tiny.yaml run.max_steps=4 data.num_workers=0
    return
  fi
  [[ $(cat "$WORK/data_source") == "$WORK/synth.csv" ]] && skip "no FER2013 data: no kit and no FER_CSV"
  "$PYTHON" scripts/gpu_recipe.py --data "$DATA" --work "$WORK" --out "$OUT" --budget-s "$1" \
    --figures "$WORK/figures/recipe.json" "data.num_workers=$(($(nproc) > 9 ? 8 : 2))"
}
export -f skip have_cuda report figures check_install check_data check_pytest check_bench_gpu check_bench_augment \
  check_recipe
export JSON

report init --mode "$MODE"
run_check install 300 check_install
export PATH="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$("$PYTHON" -m site --user-base)/bin:$PATH"
report versions
if [[ $MODE != cpu ]] && ! have_cuda; then
  echo "gpu-check: torch sees no CUDA device; use CPU=1 for the dry run"
fi

# Priority order: the tests, the batch-8 benchmark, the augmentation benchmark, the recipe (RECIPE_S,
# less the start-up and bundling it needs), then the batch-64 benchmark with what is left.
# The data prep needs no GPU (and QUICK=1 no data): it runs beside the tests.
if [[ $MODE == quick ]]; then
  for name in data bench_augment recipe bench_gpu_b64; do report skip "$name" "QUICK=1"; done
else
  run_check data 240 check_data &
  DATA_PID=$!
fi
# Sized for test_precision.py: an eager run and two compilations (minutes each on a cold cache).
run_check pytest_gpu $([[ $MODE == full ]] && echo 420 || echo 240) check_pytest
[[ -z $CHECKS || ,$CHECKS, == *,pytest_gpu,* ]] && report junit "$WORK"/junit_*.xml
run_check bench_gpu_b8 180 check_bench_gpu bench_gpu_b8 8
if [[ $MODE != quick ]]; then
  wait "$DATA_PID"
  run_check bench_augment 90 check_bench_augment
  # Training gets RECIPE_S or what is left less ~100 s (overrun grace, checkpoint, fp16 bundle + its eval).
  left=$((DEADLINE - $(date +%s) - 100))
  recipe_s=$((RECIPE_S < left ? RECIPE_S : left))
  if ((recipe_s < 40)); then
    report skip recipe "out of the ${BUDGET_S}s time budget (${recipe_s}s left for training)"
  else
    run_check recipe $((recipe_s + 100)) check_recipe "$recipe_s"
  fi
  if [[ $MODE == full ]]; then
    run_check bench_gpu_b64 180 check_bench_gpu bench_gpu_b64 64
  else
    report skip bench_gpu_b64 "CPU dry mode: batch 64 is measured on the GPU only"
  fi
fi

report finish
rc=$?
echo "gpu-check: $(($(date +%s) - START))s; $JSON"
exec 1>&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log is complete before the results are collected
[[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"  # runs, decoded CSV: the evidence is in $OUT
exit $rc
