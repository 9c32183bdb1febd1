#!/usr/bin/env bash
# Create benchmarks/crypten/.venv (git-ignored) with CrypTen, for the comparison run `python -m benchmarks.run --exp crypten`.
#
# The venv sees the system site-packages, so it reuses the installed torch (2.14.1) instead of pulling another copy.
# CrypTen 0.4.1 (the last release, 2022-12) declares `sklearn` (the deprecated PyPI stub that refuses to install) and
# `torch>=1.7`; we install it with --no-deps and add its real dependencies by hand, then check that it imports and that
# a 3-party computation runs. Exit status: 0 = CrypTen usable, non-zero = not usable (the reason is printed last, and
# written to .venv/UNAVAILABLE for run.py to report).
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3}"

fail() {
    mkdir -p "$VENV"
    echo "$1" > "$VENV/UNAVAILABLE"
    echo "CrypTen not available: $1" >&2
    exit 1
}

rm -f "$VENV/UNAVAILABLE"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV" || fail "could not create a venv with $PY"
fi
VPY="$VENV/bin/python"

echo "== installing crypten (no deps) and its dependencies into $VENV"
"$VPY" -m pip install -q --no-deps "crypten==0.4.1" || fail "pip could not install crypten==0.4.1"
"$VPY" -m pip install -q omegaconf onnx pandas pyyaml tensorboard future scipy scikit-learn \
    || fail "pip could not install CrypTen's dependencies (omegaconf onnx pandas pyyaml tensorboard future scipy scikit-learn)"

echo "== import check"
# bench.import_crypten() registers a stand-in for torch.onnx._internal.registration (gone in torch 2.14), see bench.py
if ! err="$(cd "$HERE/../.." && "$VPY" -c 'from benchmarks.crypten.bench import import_crypten; import torch; c = import_crypten(); print("crypten", getattr(c, "__version__", "?"), "torch", torch.__version__)' 2>&1)"; then
    fail "crypten installed but does not import with this torch: $(echo "$err" | tail -n 1)"
fi
echo "$err"

echo "== 3-party smoke test"
if ! err="$(cd "$HERE/../.." && timeout 300 "$VPY" -m benchmarks.crypten.bench --smoke 2>&1)"; then
    fail "crypten imports but a 3-party run fails: $(echo "$err" | grep -v '^\s*$' | tail -n 1)"
fi
echo "$err" | tail -n 3
echo "CrypTen available in $VENV"
