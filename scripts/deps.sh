#!/usr/bin/env bash
# Installs the system packages spes's build and tests need, when they are
# missing. Idempotent: does nothing when everything is there. Debian/Ubuntu
# (apt); elsewhere it says what to install.
#
#   scripts/deps.sh            cmake, clang and libclang-dev for the embedded
#                              model (llama.cpp, built by llama-cpp-sys-2, whose
#                              bindings bindgen generates with libclang)
#   scripts/deps.sh PKG...     these Debian packages, if not installed
#                              (scripts/postgres.sh asks for PostgreSQL this way)
set -euo pipefail

missing=()
if [ $# -gt 0 ]; then
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
else
  command -v cmake >/dev/null || missing+=(cmake)
  command -v clang >/dev/null || missing+=(clang)
  if ! compgen -G '/usr/lib/llvm-*/lib/libclang*.so*' >/dev/null \
     && ! compgen -G '/usr/lib/*/libclang*.so*' >/dev/null; then
    missing+=(libclang-dev)
  fi
fi
[ ${#missing[@]} -eq 0 ] && exit 0

echo "==> installing packages: ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "deps: need root (or sudo) to install ${missing[*]}; install them and run this again" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null; then
  echo "deps: no apt-get here; install ${missing[*]} with your package manager and run this again" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${missing[@]}" >&2 || {
  $SUDO apt-get update -q >&2
  $SUDO apt-get install -y -q "${missing[@]}" >&2
}
