#!/usr/bin/env bash
# Set up pybpf on a fresh Debian machine (as root), in a virtualenv at .venv:
#
#   tools/setup.sh          python3, venv, a C compiler and Python's headers (for the
#                           C helper) from apt if missing, then `pip install .` into .venv
#   tools/setup.sh --test   the same, plus the test dependencies: tools/install-test-deps.sh
#                           (clang-19, llvm-19, libbpf-dev, bpftool, chromium), `pip install '.[test]'`
#                           and what runs examples/lab.ipynb in the tests (nbclient, nbformat, ipykernel)
#
# Then `. .venv/bin/activate` (or call .venv/bin/python). Debian's own Python is
# "externally managed" (PEP 668): pip refuses to install into it, hence the virtualenv.
set -euo pipefail
cd "$(dirname "$0")/.."

test=0
case "${1:-}" in
    "") ;;
    --test) test=1 ;;
    -h|--help) sed -n '2,10s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown argument: $1 (expected --test or nothing)" >&2; exit 2 ;;
esac

need=()
if ! command -v python3 >/dev/null 2>&1; then
    need+=(python3 python3-venv python3-dev)
else
    # Debian splits ensurepip (python3-venv) and Python.h (python3-dev) out of python3
    python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
    python3 - <<'EOF' || need+=(python3-dev)
import os, sys, sysconfig
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
EOF
fi
command -v gcc >/dev/null 2>&1 || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup.sh: installing ${need[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
if [ "$test" = 1 ]; then
    tools/install-test-deps.sh
    [ -n "$(find /usr/include -path '*/sys/sdt.h' -print -quit)" ] || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends systemtap-sdt-dev; }   # sys/sdt.h: the USDT tests' probes
    .venv/bin/python -m pip install -q '.[test]'
    .venv/bin/python -m pip install -q nbclient nbformat ipykernel   # tests/test_notebook.py only
else
    .venv/bin/python -m pip install -q .
fi
echo "setup.sh: pybpf installed in .venv (activate it with: . .venv/bin/activate)" >&2
