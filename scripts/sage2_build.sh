#!/usr/bin/env bash
# SageAttention 2's SM90 kernel (the `sage2` attention backend) built from source, also for an OFFLINE Hopper machine.
#
#   bash scripts/sage2_build.sh pack DIR [GIT_DIR]   # connected machine: SageAttention's csrc/, sageattention/ and
#                                                    # LICENSE into DIR (from the clone GIT_DIR, else a fresh clone)
#   bash scripts/sage2_build.sh build DIR            # GPU machine (nvcc + torch): the two SM90 modules into DIR/build
#   bash scripts/sage2_build.sh install DIR TARGET   # the package with its built modules into TARGET
#   export PYTHONPATH=TARGET:$PYTHONPATH             # what `install` prints, to use it
#
# Why by hand: SageAttention 2 is published as source only (the registry holds only 1.0.6, the Triton version), and
# its setup.py builds modules for every architecture it finds. `sage2` needs exactly two: `_qattn_sm90` (the INT8 QK /
# FP8 PV kernel) and `_fused` (its quantisation kernels), built for sm_90a with the upstream flags; the package then
# imports without the sm80/sm89 modules. The two build side by side (~2 min on 16 cores, measured 108 s). Their code
# is Apache-2.0 and is never committed here: `pack` stores it in DIR, an ignored folder.
set -euo pipefail
ARCHIVE=sageattention-src.tar.gz
REPO_URL=https://github.com/thu-ml/SageAttention

usage() { sed -n '2,8p' "$0" >&2; exit 2; }

pack() {
  local dir=$1 git_dir=${2:-}
  mkdir -p "$dir"
  if [ -z "$git_dir" ]; then
    tmp=$(mktemp -d)   # global on purpose: the EXIT trap runs after this function has returned
    trap 'rm -rf "$tmp"' EXIT
    git clone -q --depth 1 "$REPO_URL" "$tmp/src"
    git_dir="$tmp/src/.git"
  fi
  git --git-dir="$git_dir" archive --format=tar.gz -o "$dir/$ARCHIVE" HEAD csrc sageattention LICENSE
  git --git-dir="$git_dir" rev-parse HEAD > "$dir/sageattention-src.commit"
  echo "packed SageAttention $(cat "$dir/sageattention-src.commit") into $dir/$ARCHIVE"
  du -h "$dir/$ARCHIVE"
}

build_module() {  # NAME SOURCES... : one extension module with torch.utils.cpp_extension, into $BUILD/NAME
  python3 - "$SRC" "$BUILD" "$@" <<'EOF'
import os
import sys

import torch
from torch.utils.cpp_extension import load

src, build, name, *sources = sys.argv[1:]
abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
nvcc = ["-O3", "-std=c++17", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "--use_fast_math",
        "--threads=8", "-diag-suppress=174", abi]
os.makedirs(os.path.join(build, name), exist_ok=True)
load(name=name, sources=[os.path.join(src, s) for s in sources],
     extra_cflags=["-O3", "-std=c++17", "-DENABLE_BF16", abi], extra_cuda_cflags=nvcc,
     extra_ldflags=["-lcuda"] if name == "_qattn_sm90" else [], build_directory=os.path.join(build, name), verbose=False)
print(f"built {name}")
EOF
}

build() {
  local dir=$1
  [ -f "$dir/$ARCHIVE" ] || { echo "no $ARCHIVE in $dir: run 'pack' first" >&2; exit 1; }
  SRC="$dir/src" BUILD="$dir/build"
  rm -rf "$SRC" && mkdir -p "$SRC" "$BUILD" && tar -xzf "$dir/$ARCHIVE" -C "$SRC"
  export SRC BUILD TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=${MAX_JOBS:-16}
  local start=$SECONDS
  build_module _qattn_sm90 csrc/qattn/pybind_sm90.cpp csrc/qattn/qk_int_sv_f8_cuda_sm90.cu > "$BUILD/qattn.log" 2>&1 &
  local qattn=$!
  build_module _fused csrc/fused/pybind.cpp csrc/fused/fused.cu > "$BUILD/fused.log" 2>&1 \
    || { tail -30 "$BUILD/fused.log" >&2; exit 1; }
  wait "$qattn" || { tail -30 "$BUILD/qattn.log" >&2; exit 1; }
  echo "built _qattn_sm90 and _fused in $((SECONDS - start)) s into $BUILD"
}

install() {
  local dir=$1 target=$2 so
  [ -d "$dir/src/sageattention" ] || { echo "no built source in $dir: run 'build' first" >&2; exit 1; }
  mkdir -p "$target" && rm -rf "$target/sageattention"
  cp -r "$dir/src/sageattention" "$target/" && cp "$dir/src/LICENSE" "$target/sageattention/"
  for so in "$dir"/build/_qattn_sm90/_qattn_sm90*.so "$dir"/build/_fused/_fused*.so; do
    [ -f "$so" ] || { echo "missing built module $so: run 'build' first" >&2; exit 1; }
    cp "$so" "$target/sageattention/"
  done
  PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" python3 -c "import sageattention.sm90_compile as m, \
sageattention; print('sageattention SM90 kernel imports from', sageattention.__file__)"
  echo "export PYTHONPATH=$target\${PYTHONPATH:+:\$PYTHONPATH}"
}

case "${1:-}" in
  pack) [ $# -ge 2 ] && [ $# -le 3 ] || usage; pack "$2" "${3:-}" ;;
  build) [ $# -eq 2 ] || usage; build "$2" ;;
  install) [ $# -eq 3 ] || usage; install "$2" "$3" ;;
  *) usage ;;
esac
