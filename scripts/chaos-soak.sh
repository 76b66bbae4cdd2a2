#!/usr/bin/env bash
# Chaos soak (not in CI, under 10 minutes): 20 chains of 20 steps under
# random SIGKILLs, a disk that fills and empties (tmpfs; needs root for
# mount) and 20% provider faults; see crates/spes-cli/benches/chaos.rs.
# SPES_CHAOS_SEED=N replays a seed; SPES_CHAOS_CHAINS=N changes the count.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${CARGO:-cargo}" bench --profile dev -p spes-cli --no-default-features --bench chaos "$@"
