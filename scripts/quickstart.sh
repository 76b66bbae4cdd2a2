#!/usr/bin/env bash
# The README's first command: build spes and run an example workflow offline
# (no API key). Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "spes needs a Rust toolchain (cargo). Install it with rustup, then run this again." >&2
  exit 1
fi

echo "==> building spes (first build takes a few minutes)" >&2
cargo build --quiet --bin spes
SPES="$PWD/target/debug/spes"
[ -n "${CARGO_TARGET_DIR:-}" ] && SPES="$CARGO_TARGET_DIR/debug/spes"

echo "==> running examples/workflows/summarize-then-title.yaml" >&2
cd examples
"$SPES" run workflows/summarize-then-title.yaml --input-file text=inputs/release-notes.txt
