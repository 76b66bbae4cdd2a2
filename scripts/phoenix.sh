#!/usr/bin/env bash
# Installs Arize Phoenix (PyPI `arize-phoenix`), the OpenTelemetry backend
# the CLI's trace tests export to, into a project-local virtual environment,
# and prints the variable the tests read (eval its output):
#
#   eval "$(bash scripts/phoenix.sh)"
#
#   SPES_TEST_PHOENIX  the `phoenix` executable (in a venv); the tests start
#                      it on loopback with its own telemetry off
#
# Idempotent: a pinned version already installed is not installed again.
# Needs python3 (with venv); installs it with apt when missing.
# Folder: $SPES_PHOENIX_DIR, default target/phoenix. Nothing is downloaded
# when the tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

PHOENIX_VERSION=20.26.1
dir="${SPES_PHOENIX_DIR:-$PWD/target/phoenix}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  bash scripts/deps.sh python3 python3-venv
fi

venv="$dir/venv"
bin="$venv/bin/phoenix"
stamp="$venv/.arize-phoenix-$PHOENIX_VERSION"
if [ ! -f "$stamp" ] || [ ! -x "$bin" ]; then
  echo "==> installing arize-phoenix $PHOENIX_VERSION (PyPI) into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "arize-phoenix==$PHOENIX_VERSION" >&2
  touch "$stamp"
fi

echo "export SPES_TEST_PHOENIX='$bin'"
