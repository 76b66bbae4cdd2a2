#!/usr/bin/env bash
# The chaos soak (not in CI; a few minutes): 20 chains of 20 steps under
# random SIGKILLs, a disk that fills and empties (a tmpfs: run as root) and
# 20% provider faults; checks every journal, every output and the duplicate
# model calls, then prints the tally. SPES_CRASH_SEED=N replays a soak.
# Built in the dev profile (the checks are about correctness, not speed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo bench --profile dev -p spes-cli --bench chaos
