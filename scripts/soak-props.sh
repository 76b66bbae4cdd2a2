#!/usr/bin/env bash
# A longer soak of the property tests (not in CI): arbitrary workflow YAML,
# component frontmatter, templates and transform inputs, and (spes-llm) the
# SSE decoder. CASES per property, default 100000, in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
export PROPTEST_CASES="${CASES:-100000}"
cargo test --release -p spes-core --test props
cargo test --release -p spes-llm --lib sse::
