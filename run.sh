#!/usr/bin/env bash
# jaxgen's two entry points; each does all the set-up itself (a virtualenv in .venv).
#   ./run.sh demo        train the demo DDPM on the embedded digits, sample, evaluate
#   ./run.sh test [ARGS] run the test suite in parallel workers (ARGS go to pytest)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${JAXGEN_VENV:-.venv}"
PY="${PYTHON:-python3}"
# XLA:CPU allocates its temporary buffers afresh on every call, and with 4 KiB pages the page
# faults cost up to half of a training step here; glibc's malloc with transparent huge pages
# cuts them ~100-fold (docs/performance.md). Ignored where glibc or the kernel lack it.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}"

setup() {  # $1: pip extras ("" or "[test]")
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  local stamp="$VENV/.jaxgen-installed$1"
  if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".$1"
    touch "$stamp"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  demo)
    setup ""
    WORKDIR="${WORKDIR:-runs/ddpm_digits}"
    "$VENV/bin/python" -m experiments.main train \
      --config experiments/configs/ddpm_digits.py --workdir "$WORKDIR" "$@"
    "$VENV/bin/python" -m experiments.main evaluate --workdir "$WORKDIR"
    echo "samples: $WORKDIR/samples/  metrics: $WORKDIR/metrics.jsonl  eval: $WORKDIR/eval/"
    ;;
  test)
    setup "[test]"
    # Test files run in parallel, one file per worker at a time (`--dist loadfile`, so a
    # file's shared compiled fixtures stay in one process): the suite is mostly XLA compiles,
    # which use one core each. Workers: JAXGEN_TEST_WORKERS, else min(cores, 4); 0 = serial.
    workers="${JAXGEN_TEST_WORKERS:-$(n=$(nproc 2>/dev/null || echo 1); echo $(( n < 4 ? n : 4 )))}"
    "$VENV/bin/python" -m pytest -n "$workers" --dist loadfile "$@"
    ;;
  *)
    echo "usage: ./run.sh demo | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
