#!/usr/bin/env bash
# The GPU check (issue 26 §5): on a machine with an NVIDIA GPU, the CUDA tests (tests/test_cuda.py, marked cuda)
# and the σ fit's speed on VGG-16 at 224 px (bench/sigma_speed.py), then one summary table.  Expected: about 4
# minutes on one H100/H200 (not yet measured); each part has its own time limit (the whole stays under 8 minutes).
#
#     bash bench/gpu_check.sh            # or: make gpu-check
#
# Without a GPU it says so in one line and exits 0.  PYTHON picks the interpreter (default: python3); kdq is made
# importable from this checkout without installing anything (a temporary folder holding a link kdq -> the
# repository, put first on PYTHONPATH).  With OUT set, everything printed is also written to $OUT/gpu_check.log,
# with the test report ($OUT/gpu_check_junit.xml) and the bench's figures ($OUT/sigma_speed.csv) beside it.
# Exit status: 0 when every test passed and the bench finished, 1 otherwise.
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
TESTS_LIMIT_S=${GPU_CHECK_TESTS_LIMIT_S:-240}  # the CUDA tests (expected: about 2 minutes)
TEST_LIMIT_S=${GPU_CHECK_TEST_LIMIT_S:-150}    # one test, with pytest-timeout where it is installed
BENCH_LIMIT_S=${GPU_CHECK_BENCH_LIMIT_S:-180}  # the bench (about 1.5 minutes on an H200)
BENCH_FLAGS=(--device cuda --arch vgg16 --layer conv fc1 --samples 96 --steps 20 --break-steps 5 --trial-steps 5
             --repeats 3 --cuda-batches 1 2 8 --cudnn-benchmark --map-effect 4)
export PYTHONUNBUFFERED=1

no_gpu() {
    # a machine without an NVIDIA GPU: one line, nothing else
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi not found); nothing to run"
        return 0
    fi
    if ! nvidia-smi -L 2>/dev/null | grep -q "^GPU "; then
        echo "gpu-check: no NVIDIA GPU on this machine (nvidia-smi lists none); nothing to run"
        return 0
    fi
    return 1
}

kdq_importable() {
    # a temporary folder with the link kdq -> this checkout, first on PYTHONPATH (child processes inherit it)
    KDQ_LINKS=$(mktemp -d "${TMPDIR:-/tmp}/kdq_gpu_check.XXXXXX") || return 1
    trap 'rm -rf "$KDQ_LINKS"' EXIT  # the folder and its link (rm does not follow it)
    ln -s "$ROOT" "$KDQ_LINKS/kdq" || return 1
    export PYTHONPATH="$KDQ_LINKS${PYTHONPATH:+:$PYTHONPATH}"
    "$PY" -c "
import sys
from pathlib import Path
import kdq
where = Path(kdq.__file__).resolve().parent
sys.exit(0 if where == Path('$ROOT').resolve() else 'kdq is imported from ' + str(where) + ', not $ROOT')"
}

run_tests() {
    local report=$1 timeout_flags=()
    if "$PY" -c "import pytest_timeout" 2>/dev/null; then
        timeout_flags=(-p pytest_timeout --timeout="$TEST_LIMIT_S")
    else
        echo "gpu-check: pytest-timeout is not installed: no per-test limit (the whole part has $TESTS_LIMIT_S s)"
    fi
    # only our plugins: a plugin the machine's Python happens to carry must not change collection
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 10 "$TESTS_LIMIT_S" "$PY" -m pytest -q -m cuda tests/test_cuda.py \
        -p no:cacheprovider "${timeout_flags[@]}" --durations=8 --junitxml="$report"
}

summary() {
    # one table: the test counts, then fits/s per configuration of the bench
    "$PY" - "$1" "$2" "$3" "$4" <<'EOF'
import csv
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

report, figures, tests_rc, bench_rc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
print("=" * 78)
print("gpu-check summary")
if report.is_file():
    suite = ET.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    n = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    print(f"CUDA tests: {passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped "
          f"of {n['tests']} in {float(suite.get('time', 0)):.0f} s (exit status {tests_rc})")
    for case in suite.iter("testcase"):
        for bad in (*case.iter("failure"), *case.iter("error")):
            message = (bad.get("message") or "").strip().splitlines() or [""]
            print(f"  {bad.tag.upper()} {case.get('name')}: {message[0][:110]}")
else:
    print(f"CUDA tests: no report (exit status {tests_rc}: cut off by the time limit or failed to start)")
rows = list(csv.DictReader(figures.open())) if figures.is_file() else []
if rows:
    print(f"bench/sigma_speed.py (exit status {bench_rc}; T: steps timed, n: noise samples, chunk: samples per pass):")
    print(f"  {'layer':5s} {'measure':30s} {'amp':4s} {'B':>3s} {'value':>10s} {'unit':4s} {'T':>3s} {'n':>3s} "
          f"{'chunk':>5s}")
    for r in rows:
        print(f"  {r['layer']:5s} {r['measure']:30s} {r['amp']:4s} {r['batch']:>3s} {float(r['value']):10.4g} "
              f"{r['unit']:4s} {r['steps']:>3s} {r['samples']:>3s} {r['chunk']:>5s}")
    for layer in dict.fromkeys(r["layer"] for r in rows):
        for amp in ("off", "bf16"):
            rates = {int(r["batch"]): float(r["value"]) for r in rows
                     if r["layer"] == layer and r["measure"] == "fits/s" and r["amp"] == amp}
            if 1 in rates:
                top = max(rates, key=rates.get)
                steps = next(int(r["steps"]) for r in rows if r["layer"] == layer and r["measure"] == "fits/s")
                print(f"  {layer} amp={amp}: B=1 {rates[1]:.2f} fits/s, best B={top} {rates[top]:.2f} fits/s "
                      f"({rates[top] / rates[1]:.2f}x; T={steps}: at the paper's T=80 about "
                      f"{rates[top] * steps / 80:.2f} fits/s)")
else:
    print(f"sigma_speed: no figures (exit status {bench_rc})")
print("=" * 78)
EOF
}

main() {
    if no_gpu; then
        return 0
    fi
    cd "$ROOT" || return 1
    echo "gpu-check: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu-check: nvidia-smi lists a GPU but $PY's torch cannot use CUDA"
        return 1
    fi
    "$PY" - <<'EOF'
import platform, sys

import numpy, torch, torchvision

try:
    nccl = ".".join(map(str, torch.cuda.nccl.version()))
except Exception as exc:  # noqa: BLE001 - a line of information only
    nccl = f"unknown ({exc})"
print(f"gpu-check: python {platform.python_version()} ({sys.executable}), torch {torch.__version__} (CUDA "
      f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, NCCL {nccl}), torchvision "
      f"{torchvision.__version__}, numpy {numpy.__version__}; {torch.cuda.device_count()} GPU(s), "
      f"{torch.cuda.get_device_name(0)}")
EOF
    if ! kdq_importable; then
        echo "gpu-check: could not make kdq importable from $ROOT"
        return 1
    fi
    local work=${OUT:-$KDQ_LINKS}
    mkdir -p "$work"
    local report="$work/gpu_check_junit.xml" figures="$work/sigma_speed.csv" tests_rc bench_rc start=$SECONDS
    rm -f "$report" "$figures"

    echo "gpu-check: [1/2] the CUDA tests (limit $TESTS_LIMIT_S s)"
    run_tests "$report"
    tests_rc=$?
    echo "gpu-check: tests done in $((SECONDS - start)) s, exit status $tests_rc"

    echo "gpu-check: [2/2] bench/sigma_speed.py ${BENCH_FLAGS[*]} (limit $BENCH_LIMIT_S s)"
    timeout -k 10 "$BENCH_LIMIT_S" "$PY" bench/sigma_speed.py "${BENCH_FLAGS[@]}" --csv "$figures"
    bench_rc=$?
    echo "gpu-check: bench done at $((SECONDS - start)) s, exit status $bench_rc"

    summary "$report" "$figures" "$tests_rc" "$bench_rc"
    echo "gpu-check: $((SECONDS - start)) s in all"
    [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
}

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu_check.log"
    exit "${PIPESTATUS[0]}"
fi
main
