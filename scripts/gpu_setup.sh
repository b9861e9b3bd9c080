#!/usr/bin/env bash
# On the offline GPU machine, from the repo root: install the wheels that scripts/gpu_wheels.sh built (fairseq-fixed,
# sacremoses, subword-nmt and fairseq's missing dependencies) into that machine's python3, which already holds CUDA
# torch and numpy, then install smx itself (editable, no dependencies) and check the imports.
#
#   bash scripts/gpu_setup.sh [WHEEL_DIR]        (default: .gpu-wheels)
#   PYTHON=/path/to/python bash scripts/gpu_setup.sh     (default interpreter: python3)
#   SMX_GPU_SITE=DIR bash scripts/gpu_setup.sh   (install into DIR with pip --target, never into the interpreter)
#
# pip runs with --no-index (nothing is fetched) and with torch and numpy pinned to the versions already installed,
# and the wheel folder holds neither, so pip can never replace them.
# Where the interpreter's site-packages is not writable (a non-root user on a root-owned image), or SMX_GPU_SITE is
# set, the carried wheels go into a folder instead (default .gpu-site in the repo root, git-ignored) with
# --target --no-deps, and every later command needs PYTHONPATH=$PWD/.gpu-site:$PWD (README "On a GPU" always sets
# it: harmless where the folder does not exist).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PYTHON="${PYTHON:-python3}"
WHEELS="${1:-.gpu-wheels}"

die() { echo "gpu_setup.sh: $*" >&2; exit 2; }

shopt -s nullglob
fs=("$WHEELS"/fairseq_fixed-*.whl)
[ -d "$WHEELS" ] && [ ${#fs[@]} -gt 0 ] ||
  die "no wheels in $WHEELS: run scripts/gpu_wheels.sh (make gpu-wheels) on a machine with a registry first, and carry $WHEELS here"
command -v "$PYTHON" >/dev/null || die "no interpreter '$PYTHON': set PYTHON=/path/to/python3.12"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' ||
  die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); the wheels are for CPython 3.12 (set PYTHON=)"

versions() {
  "$PYTHON" -c 'import importlib.metadata as m
for d in ("torch", "numpy"):
    try: print(f"{d}=={m.version(d)}")
    except m.PackageNotFoundError: pass'
}
before="$(versions)"
grep -q '^torch==' <<<"$before" || die "$PYTHON has no torch: this script is for the GPU machine, whose python3 holds CUDA torch"
grep -q '^numpy==' <<<"$before" || die "$PYTHON has no numpy: the GPU machine's python3 holds numpy 2.x"
echo "== $("$PYTHON" -c 'import sys; print(sys.executable)'): $(tr '\n' ' ' <<<"$before")"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
printf '%s\n' "$before" >"$WORK/constraints.txt"

PIP=("$PYTHON" -m pip --disable-pip-version-check install --no-index --find-links "$WHEELS" -c "$WORK/constraints.txt")
# A system interpreter outside a venv refuses pip installs (PEP 668) unless told.
if "$PYTHON" -c 'import sys, sysconfig, os
sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'; then
  echo "   (externally managed interpreter: installing with --break-system-packages)"
  PIP+=(--break-system-packages)
fi

SITE="${SMX_GPU_SITE:-}"
if [ -z "$SITE" ] && ! "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not all(os.access(sysconfig.get_path(k), os.W_OK) for k in ("purelib", "platlib")))'; then
  SITE="$REPO/.gpu-site"
  echo "   (the site-packages of $PYTHON is not writable: installing into $SITE)"
fi

if [ -n "$SITE" ]; then
  mkdir -p "$SITE" || die "cannot create $SITE (set SMX_GPU_SITE to a writable folder)"
  SITE="$(cd "$SITE" && pwd)"
  echo "== installing from $WHEELS (offline) into $SITE (--target, the carried wheels only)"
  "${PIP[@]}" -q --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "== installing from $WHEELS (offline)"
  # With dependencies: pip checks that what fairseq needs and the folder lacks (torch, torchaudio, numpy, cython,
  # scikit-learn, regex, sacrebleu, tqdm, packaging, pyyaml, click, joblib) is installed already. If that fails (a
  # machine without torchaudio, say), install exactly the carried wheels, without dependencies, and let the imports
  # decide.
  if ! "${PIP[@]}" -q fairseq-fixed sacremoses subword-nmt 2>"$WORK/pip.err"; then
    grep -E '^ERROR' "$WORK/pip.err" | head -3 >&2 || true
    echo "gpu_setup.sh: WARNING: the install with dependencies failed (above); installing the carried wheels with --no-deps" >&2
    "${PIP[@]}" -q --no-deps "$WHEELS"/*.whl
  fi
fi

after="$(versions)"
[ "$before" = "$after" ] || die "torch/numpy changed: was $(tr '\n' ' ' <<<"$before"), now $(tr '\n' ' ' <<<"$after")"

echo "== import checks"
(cd "$WORK" && "$PYTHON" - <<'EOF')
import importlib.metadata as m
import fairseq.data.data_utils_fast, fairseq.data.token_block_utils_fast, fairseq.libbleu  # the compiled extensions
import fairseq, sacremoses, subword_nmt
from fairseq import options
import numpy, torch
print(f"   fairseq {fairseq.__version__} ({m.version('fairseq-fixed')}), sacremoses {m.version('sacremoses')}, "
      f"subword-nmt {m.version('subword-nmt')}, hydra-core {m.version('hydra-core')}, omegaconf {m.version('omegaconf')}")
print(f"   torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}), numpy {numpy.__version__}")
for ext in ("libnat", "libbase"):
    try:
        __import__(f"fairseq.{ext}")
    except ImportError:
        print(f"   fairseq.{ext}: not built (torch C++ extension; only non-autoregressive models / BASE layers need it)")
EOF

if [ -n "$SITE" ]; then
  (cd "$WORK" && "$PYTHON" -c 'import smx, os; print("   smx importable from", os.path.dirname(smx.__file__))')
  echo "done: run every command with PYTHONPATH=$SITE:$REPO, e.g. PYTHONPATH=$SITE:$REPO $PYTHON -m smx ..."
  exit 0
fi

echo "== smx (editable, no dependencies)"
if "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null &&
  "${PIP[@]}" -q --no-deps --no-build-isolation -e . 2>"$WORK/pip-e.err"; then
  (cd "$WORK" && "$PYTHON" -c 'import smx, os; print("   smx importable from", os.path.dirname(smx.__file__))')
  echo "done: run 'smx ...' or '$PYTHON -m smx ...'"
else
  grep -E '^ERROR' "$WORK/pip-e.err" 2>/dev/null | head -3 >&2 || true
  echo "gpu_setup.sh: smx could not be installed editable (needs setuptools>=64); instead run: export PYTHONPATH=$REPO" >&2
fi
