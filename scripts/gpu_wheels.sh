#!/usr/bin/env bash
# Build the wheels that the offline GPU machine lacks, for its CPython 3.12 on x86-64:
#   fairseq-fixed (compiled here from its sdist), sacremoses, subword-nmt, and fairseq's missing dependencies.
# Run it on a machine that reaches PyPI; carry the folder with the checkout; there run scripts/gpu_setup.sh.
#
#   bash scripts/gpu_wheels.sh [OUT_DIR]        (default: .gpu-wheels in the repo root)
#
# What the GPU machine already has (and what is therefore never carried): torch 2.11 (CUDA), torchaudio, numpy 2.5,
# cython, scikit-learn, scipy, matplotlib, typer, rich, pyyaml, regex, sacrebleu, tqdm, click, joblib, packaging,
# tensorboard, setuptools, wheel. torch, numpy and anything CUDA are refused here whatever happens.
#
# fairseq-fixed's setup.py imports torch.utils.cpp_extension unconditionally and adds three torch C++ extensions
# (fairseq.libbase, fairseq.libnat, alignment_train_cpu_binding). Built here they would be tied to the torch of the
# build (its C++ ABI and version), and break against the GPU machine's torch 2.11. So the build venv has NO torch:
# a stub `torch.utils.cpp_extension`, on PYTHONPATH for the build only, marks those three as skipped and uses plain
# setuptools build_ext. The wheel then holds only the torch-free extensions (fairseq.libbleu,
# fairseq.data.data_utils_fast, fairseq.data.token_block_utils_fast), built against numpy 2.x (<= the GPU machine's
# 2.5.2: numpy's C ABI is forward compatible within 2.x). Its metadata is upstream's, unchanged.
# Not in the wheel, and so unavailable there: libnat (the edit distance of the non-autoregressive models: levenshtein,
# insertion transformer, nat criteria), libbase (balanced assignment of BASE layers, fairseq/modules/base_layer.py),
# alignment_train_cpu_binding (examples/operators). smx uses none of them.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${1:-$REPO/.gpu-wheels}"
MAX_BYTES=$((40 * 1024 * 1024))

FAIRSEQ="fairseq-fixed==0.12.3.1"
# Build tools of the (torch-free) build venv. numpy <= 2.5.2, the GPU machine's, so that the extensions need no newer.
BUILD_REQS=("cython==3.3.1" "numpy>=2,<=2.5.2" "setuptools>=64" "wheel")
# Binary or pure-python wheels taken as published (versions pinned to those the CPU venv's tests run with).
# hydra-core/omegaconf pins are fairseq-fixed's own; antlr4 4.9.x is what both of them require.
BINARY_WHEELS=(
  "hydra-core==1.3.2"
  "omegaconf==2.3.0"
  "bitarray==3.12.3"
  "sacremoses==0.2.0"
  "subword-nmt==0.3.8"
  "mock==5.2.0"        # subword-nmt declares it (never imported at run time)
  "cffi==2.1.1"        # fairseq declares it (never imported by fairseq itself); missing on the GPU machine
  "pycparser==3.12"    # cffi's dependency
)
# Published as sdists only: turned into wheels here.
SDIST_WHEELS=("antlr4-python3-runtime==4.9.3")
# manylinux tags the GPU machine accepts (its torch 2.11 is itself manylinux_2_28, so glibc >= 2.28 there).
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64)

die() { echo "gpu_wheels.sh: $*" >&2; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "this machine is $(uname -m); the GPU machine is x86_64: build there-compatible wheels on an x86_64 machine"

is_py312() { [ -n "$1" ] && "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
PY312=""
for cand in "${PYTHON312:-}" "$(command -v python3.12 || true)" /root/.pyenv/versions/3.12.1/bin/python; do
  if is_py312 "$cand"; then PY312="$cand"; break; fi
done
[ -n "$PY312" ] || die "no CPython 3.12 found: install one (e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv python3.12-dev') or set PYTHON312=/path/to/python3.12"

START=$SECONDS
WORK="$(mktemp -d /tmp/smx-gpu-wheels.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
STAGE="$WORK/wheels"
mkdir -p "$STAGE"

echo "== build venv: $("$PY312" -c 'import sys; print(sys.executable, sys.version.split()[0])') in $WORK/venv"
"$PY312" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
"${PIP[@]}" install "${BUILD_REQS[@]}"
if "$VPY" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
  die "the build venv has a torch in it; it must not (the torch extensions would be tied to that torch)"
fi

# The stub that lets fairseq-fixed's setup.py run without torch and drops its torch C++ extensions.
STUB="$WORK/torch-stub"
mkdir -p "$STUB/torch/utils"
echo '"""Build-time stub of torch for fairseq-fixed setup.py (scripts/gpu_wheels.sh); never installed."""' >"$STUB/torch/__init__.py"
: >"$STUB/torch/utils/__init__.py"
cat >"$STUB/torch/utils/cpp_extension.py" <<'EOF'
"""Stub of torch.utils.cpp_extension: torch C++ extensions are skipped, the others build with setuptools' build_ext."""
from setuptools import Extension
from setuptools.command.build_ext import build_ext


def CppExtension(name, sources, *args, **kwargs):
    ext = Extension(name, sources)
    ext._torch_stub_skip = True
    return ext


CUDAExtension = CppExtension


class BuildExtension(build_ext):
    def finalize_options(self):
        super().finalize_options()
        skipped = [e.name for e in self.extensions if getattr(e, "_torch_stub_skip", False)]
        self.extensions = [e for e in self.extensions if not getattr(e, "_torch_stub_skip", False)]
        if skipped:
            print("torch stub: skipping torch C++ extensions: " + ", ".join(skipped))
EOF

echo "== $FAIRSEQ: compiling its torch-free extensions (a few minutes)"
t0=$SECONDS
# CUDA_HOME would add CUDA extensions (skipped by the stub anyway); the stub is on PYTHONPATH for this step only.
env -u CUDA_HOME PYTHONPATH="$STUB" "$VPY" -m pip --disable-pip-version-check wheel -q --no-deps --no-build-isolation --no-cache-dir \
  --no-binary fairseq-fixed -w "$STAGE" "$FAIRSEQ"
echo "   built in $((SECONDS - t0)) s"

echo "== binary and pure-python wheels (cp312, manylinux x86_64)"
plat_args=()
for p in "${PLATFORMS[@]}"; do plat_args+=(--platform "$p"); done
"${PIP[@]}" download --no-deps --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 \
  --abi none "${plat_args[@]}" -d "$STAGE" "${BINARY_WHEELS[@]}"
"${PIP[@]}" wheel --no-deps -w "$STAGE" "${SDIST_WHEELS[@]}"

# --- checks -----------------------------------------------------------------------------------------------------------
shopt -s nullglob
wheels=("$STAGE"/*.whl)
[ ${#wheels[@]} -gt 0 ] || die "no wheel was built"
for w in "${wheels[@]}"; do
  case "$(basename "$w" | tr 'A-Z' 'a-z')" in
    torch-* | torch_* | numpy-* | nvidia_* | triton-* | cuda_*) die "refusing to carry $(basename "$w")" ;;
  esac
done
fs_whl=("$STAGE"/fairseq_fixed-*-cp312-cp312-*.whl)
[ ${#fs_whl[@]} -eq 1 ] || die "expected one cp312 fairseq_fixed wheel in $STAGE"
echo "== compiled modules in $(basename "${fs_whl[0]}"):"
"$VPY" - "${fs_whl[0]}" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
so = sorted(n for n in names if n.endswith(".so"))
for n in so:
    print("   " + n)
want = ["fairseq/libbleu.", "fairseq/data/data_utils_fast.", "fairseq/data/token_block_utils_fast."]
missing = [w for w in want if not any(n.startswith(w) for n in so)]
torch_ext = [n for n in so if n.split("/")[-1].startswith(("libnat", "libbase", "alignment_train", "ngram_repeat"))]
if missing or torch_ext:
    sys.exit(f"gpu_wheels.sh: fairseq wheel is wrong: missing {missing}, torch extensions {torch_ext}")
print("   (not built: fairseq.libnat, fairseq.libbase, alignment_train_cpu_binding: they need torch)")
EOF
# The compiled extensions must load against a numpy 2.x here (token_block_utils_fast imports torch: not loadable here).
"$VPY" - "${fs_whl[0]}" "$WORK/unz" <<'EOF'
import importlib.machinery, importlib.util, sys, zipfile, numpy
z = zipfile.ZipFile(sys.argv[1])
for mod in ("fairseq.libbleu", "fairseq.data.data_utils_fast"):
    member = next(n for n in z.namelist() if n.startswith(mod.replace(".", "/") + ".") and n.endswith(".so"))
    path = z.extract(member, sys.argv[2])
    loader = importlib.machinery.ExtensionFileLoader(mod, path)
    spec = importlib.util.spec_from_file_location(mod, path, loader=loader)
    loader.exec_module(importlib.util.module_from_spec(spec))
print(f"   libbleu and data_utils_fast load (numpy {numpy.__version__})")
EOF
# Newest glibc / libstdc++ symbol versions that the compiled modules need (the GPU machine must have at least these).
if command -v objdump >/dev/null; then
  rm -rf "$WORK/unz" && mkdir -p "$WORK/unz" && (cd "$WORK/unz" && "$VPY" -m zipfile -e "${fs_whl[0]}" .)
  need="$(find "$WORK/unz" -name '*.so' -exec objdump -T {} + | grep -oE '(GLIBC|GLIBCXX|CXXABI)_[0-9.]+' | sort -u -V |
    awk -F_ '{v[$1]=$0} END {for (k in v) printf "%s ", v[k]}' || true)"
  echo "   newest symbol versions needed: $need(this machine: $(getconf GNU_LIBC_VERSION 2>/dev/null || echo 'glibc ?'))"
fi

rm -f "$OUT_DIR"/*.whl 2>/dev/null || true
mkdir -p "$OUT_DIR"
mv "${wheels[@]}" "$OUT_DIR"/

echo "== wheels in $OUT_DIR:"
total=0
for w in "$OUT_DIR"/*.whl; do
  s=$(stat -c %s "$w")
  total=$((total + s))
  awk -v s="$s" -v n="$(basename "$w")" 'BEGIN {printf "   %8.2f MiB  %s\n", s / 1048576, n}'
done
awk -v s="$total" -v n="$(ls "$OUT_DIR"/*.whl | wc -l)" -v t="$((SECONDS - START))" \
  'BEGIN {printf "   %8.2f MiB  total (%d wheels; %d s in all)\n", s / 1048576, n, t}'
[ "$total" -le "$MAX_BYTES" ] || die "the wheels take $total bytes, over the 40 MiB limit"
echo "carry $OUT_DIR with the checkout to the GPU machine and run there: bash scripts/gpu_setup.sh"
