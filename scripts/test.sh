#!/usr/bin/env bash
# The README's second command: set up and run the whole test suite.
# Needs only a Rust toolchain; installs cargo-nextest from crates.io when it
# is missing. Tests run offline and need no API key.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "the tests need a Rust toolchain (cargo); install it with rustup" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

cargo nextest run --workspace --all-features --no-fail-fast
cargo test --workspace --doc --quiet
