#!/usr/bin/env bash
# FlashAttention-4 (and SageAttention) for an OFFLINE Hopper/Blackwell machine, from wheels fetched elsewhere.
#
#   bash scripts/fa4_wheels.sh download DIR        # on a connected machine: fetch the wheels (cp312, x86-64)
#   bash scripts/fa4_wheels.sh pack DIR            # split them into parts of < 32 MiB (for size-limited transfers)
#   bash scripts/fa4_wheels.sh install DIR TARGET  # on the GPU machine: unpack parts + wheels into TARGET
#   export PYTHONPATH=TARGET:TARGET/nvidia_cutlass_dsl/dsl_packages   # what `install` prints, to use them
#
# Why by hand: FA4 is pure Python on top of the CUTLASS DSL runtime, whose cu13 wheel is ~92 MB (too big for some
# transfers: `pack` stores its files as xz parts); `pip install --target` does not run the DSL's .pth file, so its
# package folder must go on PYTHONPATH; `pip --target --upgrade` would replace the folder the DSL wheels share, so
# each wheel is extracted on top of the others instead. Versions: the set measured in docs/PERFORMANCE.md.
set -euo pipefail
PY_VERSION=${PY_VERSION:-3.12}
PACKAGES=(flash-attn-4==4.0.0b36 nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1
          nvidia-cutlass-dsl-libs-core==4.8.1 nvidia-cutlass-dsl-libs-cu13==4.8.1 apache-tvm-ffi
          torch-c-dlpack-ext quack-kernels sageattention==1.0.6)
BIG=nvidia_cutlass_dsl_libs_cu13

usage() { sed -n '2,7p' "$0" >&2; exit 2; }

download() {
  local dir=$1 platforms=()
  for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
  mkdir -p "$dir"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform manylinux2014_x86_64 "${platforms[@]}" -d "$dir" "${PACKAGES[@]}"
  ls -l "$dir"
}

pack() {
  local dir=$1 wheel
  wheel=$(ls "$dir"/${BIG}-*.whl 2>/dev/null | head -1) || true
  [ -n "$wheel" ] || { echo "no ${BIG} wheel in $dir" >&2; exit 1; }
  tmp=$(mktemp -d)   # global on purpose: the EXIT trap runs after this function has returned
  trap 'rm -rf "$tmp"' EXIT
  python3 -m zipfile -e "$wheel" "$tmp/files"
  # xz gains nothing on the wheel itself (already deflated); on its extracted files it brings ~92 MB to ~64 MB.
  tar -C "$tmp/files" -cf - . | xz -9e -T0 > "$tmp/big.tar.xz"
  split -b 32m "$tmp/big.tar.xz" "$dir/${BIG}.tar.xz.part-"
  mkdir -p "$dir/whole" && mv "$wheel" "$dir/whole/"   # keep it out of the folder that travels
  ls -l "$dir"
}

install() {
  local dir=$1 target=$2 wheel
  mkdir -p "$target"
  if ls "$dir"/${BIG}.tar.xz.part-* >/dev/null 2>&1; then
    cat "$dir"/${BIG}.tar.xz.part-* | xz -d | tar -x -C "$target"
  fi
  for wheel in "$dir"/*.whl; do python3 -m zipfile -e "$wheel" "$target"; done
  PYTHONPATH="$target:$target/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}" \
    python3 -c "import flash_attn.cute, cutlass; print('flash_attn.cute imports from', flash_attn.cute.__file__)"
  echo "export PYTHONPATH=$target:$target/nvidia_cutlass_dsl/dsl_packages\${PYTHONPATH:+:\$PYTHONPATH}"
}

case "${1:-}" in
  download) [ $# -eq 2 ] || usage; download "$2" ;;
  pack) [ $# -eq 2 ] || usage; pack "$2" ;;
  install) [ $# -eq 3 ] || usage; install "$2" "$3" ;;
  *) usage ;;
esac
