#!/usr/bin/env bash
# The GPU path measured on one CUDA GPU, in at most 8 minutes after installation. From the repository root:
#
#   bench/gpu_check.sh                  # on a CUDA machine: installs (make install) unless installed, then measures
#   bench/gpu_check.sh --cpu-dry-run    # every step at tiny sizes on the CPU (gloo): checks the script itself
#
# Writes under $OUT (default ./gpu-check-out), 8 files at most: summary.json (each step's status, return code and
# seconds, the benchmark figures, the resume check), gpu_check.log (everything), env.json, pytest-gpu.xml (junit),
# bench.jsonl (one JSON line per benchmark run), torchrun_resume.json, performance_rows.md (rows for the GPU table
# of docs/performance.md) and details.tar.gz (each step's log, profiler traces of one step). Steps are
# independent: one failing or timing out does not stop the others. Exit 0 when every step passed.
#   1 env          nvidia-smi, torch / CUDA / cuDNN / NCCL versions, device properties
#   2 ingest       the bundled sample (sample/physionet) into a store on local disk with `ecgssl ingest` (no network)
#   3 pytest       pytest -m gpu (tests/gpu), in parallel with 2
#   4 store        the bench store: the sample's real windows tiled to BENCH_WINDOWS windows on local disk
#                  (a synthetic store if step 2 failed)
#   5 torchrun     infra/torchrun/pretrain.sh with NPROC_PER_NODE=1 (NCCL), killed mid-run and relaunched;
#                  the loss curve must continue exactly (bench/torchrun_resume.py), in parallel with 4
#   6 bench-eager  bench/train.py, base preset, eager, two batch sizes, in-memory and streaming loaders, profiled
#   7 bench-compiled  the same, torch.compile
# Without --cpu-dry-run and without a CUDA GPU it exits with status 2 within seconds, saying what is missing.
# Environment:
#   OUT                     where the results go
#   PYTHON                  an interpreter with torch and the project's dependencies (the repository is put on
#                           PYTHONPATH); default .venv/bin/python, made by `make install` when missing
#   GPU_CHECK_SAMPLE_STORE  a store made beforehand from sample/physionet with the same `ecgssl ingest` command
#                           (for a machine without prefect): step 2 copies it instead of ingesting
#   GPU_CHECK_BUDGET_S      seconds for all the steps (default 480; 1200 in the dry run); INSTALL_TIMEOUT_S (900)
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
cd "$REPO"
DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $arg (use --cpu-dry-run or nothing)" >&2; exit 2 ;;
  esac
done
[[ "${GPU_CHECK_CPU_DRY_RUN:-0}" == "1" ]] && DRY=1

OUT="${OUT:-$REPO/gpu-check-out}"
mkdir -p "$OUT" "$OUT/steps"
OUT="$(cd "$OUT" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ecgssl-gpu-check.XXXXXX")"
LOG="$OUT/gpu_check.log"
: > "$LOG"
log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
fail_now() {
  log "FAILED: $*"
  printf '{"status": "failed", "reason": "%s"}\n' "${*//\"/\'}" > "$OUT/summary.json"
  rm -rf "$WORK"
  exit 2
}

# ---- no GPU and no dry run: say so within seconds, before installing anything -----------------------------
if [[ $DRY == 0 ]]; then
  if ! command -v nvidia-smi > /dev/null 2>&1; then
    fail_now "no CUDA GPU: nvidia-smi not found (this check needs an NVIDIA GPU; bench/gpu_check.sh --cpu-dry-run runs it on the CPU)"
  fi
  if ! timeout 20 nvidia-smi -L > "$WORK/nvidia-smi-L.txt" 2>&1 || ! grep -q '^GPU' "$WORK/nvidia-smi-L.txt"; then
    fail_now "no CUDA GPU: nvidia-smi lists none ($(head -c 300 "$WORK/nvidia-smi-L.txt"))"
  fi
fi

# ---- install the README's way unless an interpreter with the project is given or already installed ----------
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
export PREFECT_HOME="$WORK/prefect" MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" DASK_TEMPORARY_DIRECTORY="$WORK/dask"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ ! -f .venv/.installed ]]; then
    log "installing: make install (timeout ${INSTALL_TIMEOUT_S:-900} s)"
    timeout "${INSTALL_TIMEOUT_S:-900}" make install >> "$LOG" 2>&1 || fail_now "make install failed (see $LOG)"
  fi
  PYTHON="$REPO/.venv/bin/python"
fi
TORCH="$("$PYTHON" -c 'import torch; print(torch.__version__, int(torch.cuda.is_available()))' 2>> "$LOG")" \
  || fail_now "$PYTHON cannot import torch (see $LOG)"
if [[ $DRY == 0 && "${TORCH#* }" != "1" ]]; then
  fail_now "torch ${TORCH% *} in $PYTHON sees no CUDA device (a CPU build of torch, or a driver problem)"
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# what every step needs (pydantic, zarr, numcodecs, ...); `ecgssl ingest` also needs prefect, checked by its step
"$PYTHON" -c 'import ecgmodel.train.pretrain, ecgmodel.data.store' >> "$LOG" 2>&1 \
  || fail_now "$PYTHON cannot import the project's training code: a dependency is missing (see $LOG)"

# ---- sizes ------------------------------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
  BUDGET="${GPU_CHECK_BUDGET_S:-1200}"
  DEVICE=cpu; PRESET=smoke; BATCHES="8 16"; STEPS=3; BENCH_WINDOWS=128
  PYTEST_MARK="gpu and not slow"; INGEST_S=240; export ECGSSL_TEST_DEVICE=cpu OMP_NUM_THREADS=1
  TORCHRUN=(--preset smoke --steps 60 --ckpt-every 20 --log-every 5 --kill-after 25
            --set data.batch_size=16 --set run.device=cpu --set run.threads=1)
  BENCH_EXTRA=(--set run.threads=1)
else
  BUDGET="${GPU_CHECK_BUDGET_S:-480}"
  DEVICE=cuda; PRESET=base; BATCHES="256 128"; STEPS=20; BENCH_WINDOWS=2048  # the key figure (256) first
  PYTEST_MARK="gpu"; INGEST_S=120
  TORCHRUN=(--preset base --steps 300 --ckpt-every 100 --log-every 10 --kill-after 150 --set data.batch_size=32)
  BENCH_EXTRA=()
fi
T0=$SECONDS

# run_step NAME TIMEOUT_S CMD...: runs CMD under a hard timeout clipped to the budget left, logs its output,
# writes steps/NAME.json (status pass / fail / timeout / skipped, rc, seconds)
run_step() {
  local name="$1" limit="$2"; shift 2
  local left=$(( BUDGET - (SECONDS - T0) ))
  (( limit > left )) && limit=$left
  if (( limit < 10 )); then
    log "$name: skipped (budget spent)"
    printf '{"step": "%s", "status": "skipped", "reason": "budget spent", "seconds": 0}\n' "$name" > "$OUT/steps/$name.json"
    return 0
  fi
  log "$name: start (timeout ${limit} s): $*"
  local t=$SECONDS rc status
  timeout --kill-after=10 "$limit" "$@" > "$OUT/steps/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=pass ;; 124|137) status=timeout ;; *) status=fail ;; esac
  cat "$OUT/steps/$name.log" >> "$LOG"
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "timeout_s": %d}\n' \
    "$name" "$status" "$rc" $(( SECONDS - t )) "$limit" > "$OUT/steps/$name.json"
  log "$name: $status (rc $rc, $(( SECONDS - t )) s)"
  return 0
}

# 1. environment
run_step env 30 "$PYTHON" - "$OUT/env.json" <<'PY'
import json, platform, subprocess, sys
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version(), "cuda_available": torch.cuda.is_available(),
       "host": platform.node(), "cpus": __import__("os").cpu_count()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(device=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1),
               sms=p.multi_processor_count, devices=torch.cuda.device_count(),
               nccl=".".join(map(str, torch.cuda.nccl.version())))
    env["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
print(json.dumps(env, indent=1))
open(sys.argv[1], "w").write(json.dumps(env, indent=1))
PY

# 2 + 3. sample store (CPU) while the GPU tests run
if [[ -n "${GPU_CHECK_SAMPLE_STORE:-}" ]]; then  # built beforehand with the same ecgssl ingest command
  SAMPLE_STORE="$WORK/sample.zarr"
  cp -r "$GPU_CHECK_SAMPLE_STORE" "$SAMPLE_STORE"
  printf '{"step": "ingest", "status": "pass", "rc": 0, "seconds": 0, "given": "%s"}\n' "$GPU_CHECK_SAMPLE_STORE" \
    > "$OUT/steps/ingest.json"
  true &
else
SAMPLE_STORE="$WORK/sample.zarr"
run_step ingest "$INGEST_S" "$PYTHON" -c 'from flows.cli import main; raise SystemExit(main())' ingest \
  --source challenge-2020 --source challenge-2021 --source ptb-xl --mirror "$REPO/sample/physionet" \
  --store "$SAMPLE_STORE" --raw-dir "$WORK/raw" --workers 0 --json &
fi
INGEST_PID=$!
run_step pytest 180 "$PYTHON" -m pytest tests/gpu -m "$PYTEST_MARK" -q -p no:cacheprovider \
  --junitxml "$OUT/pytest-gpu.xml" -o junit_family=xunit2 &
PYTEST_PID=$!
wait $INGEST_PID

# 4 + 5. bench store (CPU) while the torchrun check runs (it reads the sample store, or a synthetic one)
BENCH_STORE="$WORK/bench.zarr"
if [[ -d "$SAMPLE_STORE" ]]; then SRC=(--store "$SAMPLE_STORE"); else SRC=(); fi
run_step store 90 "$PYTHON" bench/train.py "${SRC[@]}" --windows "$BENCH_WINDOWS" --make-store "$BENCH_STORE" &
STORE_PID=$!
wait $PYTEST_PID
if [[ -d "$SAMPLE_STORE" ]]; then RESUME_STORE="$SAMPLE_STORE"; else wait $STORE_PID; RESUME_STORE="$BENCH_STORE"; fi
run_step torchrun 150 "$PYTHON" bench/torchrun_resume.py --store "$RESUME_STORE" --out "$WORK/kill-resume" \
  --nproc 1 --timeout 120 --json "$OUT/torchrun_resume.json" "${TORCHRUN[@]}"
wait $STORE_PID
[[ -d "$BENCH_STORE" ]] || BENCH_STORE=""

# 6 + 7. throughput, MFU, memory, data wait (the GPU to itself)
BENCH=(bench/train.py --device "$DEVICE" --preset "$PRESET" --batch-sizes $BATCHES --loaders memory stream
       --steps "$STEPS" --out "$OUT/bench.jsonl" --profile "$OUT/traces" ${BENCH_STORE:+--store "$BENCH_STORE"}
       "${BENCH_EXTRA[@]}")
run_step bench-eager 120 "$PYTHON" "${BENCH[@]}" --modes eager
run_step bench-compiled 240 "$PYTHON" "${BENCH[@]}" --modes compiled

# summary
[[ -f "$OUT/bench.jsonl" ]] && "$PYTHON" bench/train.py --rows "$OUT/bench.jsonl" > "$OUT/performance_rows.md" 2>> "$LOG"
"$PYTHON" - "$OUT" "$DRY" $(( SECONDS - T0 )) <<'PY'
import json, pathlib, sys
out, dry, wall = pathlib.Path(sys.argv[1]), sys.argv[2] == "1", int(sys.argv[3])
steps = [json.loads(p.read_text()) for p in sorted((out / "steps").glob("*.json"), key=lambda p: p.stat().st_mtime)]
bench = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines()] if (out / "bench.jsonl").exists() else []
resume = json.loads((out / "torchrun_resume.json").read_text()) if (out / "torchrun_resume.json").exists() else None
key = ("mode", "loader", "batch_size", "samples_per_s", "tokens_per_s", "flop_per_step", "mfu", "peak_mem_gib",
       "data_wait_frac", "error")
summary = {"status": "pass" if all(s["status"] == "pass" for s in steps) else "fail", "cpu_dry_run": dry,
           "wall_s": wall, "steps": steps, "bench": [{k: r[k] for k in key if k in r} for r in bench],
           "stream_data_wait_under_5pct": all(r.get("data_wait_frac", 1) < 0.05 for r in bench if r["loader"] == "stream") if bench else None,
           "torchrun_resume": resume}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps({k: summary[k] for k in ("status", "wall_s", "stream_data_wait_under_5pct")}))
for s in steps:
    print(f"  {s['step']:<15} {s['status']:<8} {s.get('seconds', 0):>4} s")
sys.exit(0 if summary["status"] == "pass" else 1)
PY
RC=$?
# at most 8 files at the top of $OUT: step logs and profiler traces go into one archive
tar -czf "$OUT/details.tar.gz" -C "$OUT" steps $( [[ -d "$OUT/traces" ]] && echo traces ) 2>> "$LOG" \
  && rm -rf "$OUT/steps" "$OUT/traces"
if [[ -f "$OUT/details.tar.gz" ]] && (( $(stat -c %s "$OUT/details.tar.gz") > 15000000 )); then
  log "details.tar.gz over 15 MB: keeping the step logs only"
  mkdir -p "$WORK/d" && tar -xzf "$OUT/details.tar.gz" -C "$WORK/d" steps && tar -czf "$OUT/details.tar.gz" -C "$WORK/d" steps
fi
rm -rf "$WORK"
log "done in $(( SECONDS - T0 )) s (exit $RC); results in $OUT"
exit $RC
