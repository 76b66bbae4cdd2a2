#!/usr/bin/env bash
# The README's first command: install the build packages, fetch the
# embedded model, build spes and run an example workflow on that model,
# offline, with no API key. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "spes needs a Rust toolchain (cargo). Install it with rustup, then run this again." >&2
  exit 1
fi

bash scripts/deps.sh
MODEL="$(bash scripts/fetch-model.sh)"
echo "==> model: $MODEL" >&2

echo "==> building spes (the first build compiles llama.cpp: several minutes)" >&2
cargo build --quiet --bin spes
SPES="${CARGO_TARGET_DIR:-$PWD/target}/debug/spes"

echo "==> running examples/workflows/summarize-then-title.yaml on the local model" >&2
cd examples
"$SPES" run workflows/summarize-then-title.yaml --provider local \
  --input-file text=inputs/release-notes.txt
