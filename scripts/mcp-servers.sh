#!/usr/bin/env bash
# Installs the third-party MCP servers the engine's MCP tests run against,
# from the package registries, into a project-local folder, and prints the
# variables the tests read (eval its output):
#
#   eval "$(bash scripts/mcp-servers.sh)"
#
#   SPES_TEST_MCP_TIME        the `mcp-server-time` executable (PyPI, in a venv)
#   SPES_TEST_MCP_EVERYTHING  the entry script of `@modelcontextprotocol/server-everything`
#                             (npm), run as `node $SPES_TEST_MCP_EVERYTHING stdio|streamableHttp`
#
# Idempotent: a pinned version already installed is not installed again.
# Needs python3 (with venv) and node/npm; installs them with apt when missing.
# Folder: $SPES_MCP_DIR, default target/mcp. Nothing is downloaded when the
# tests run.
set -euo pipefail
cd "$(dirname "$0")/.."

TIME_VERSION=2026.10.19
EVERYTHING_VERSION=2026.8.31
dir="${SPES_MCP_DIR:-$PWD/target/mcp}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  bash scripts/deps.sh python3 python3-venv
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  bash scripts/deps.sh nodejs npm
fi

venv="$dir/venv"
time_bin="$venv/bin/mcp-server-time"
stamp="$venv/.mcp-server-time-$TIME_VERSION"
if [ ! -f "$stamp" ] || [ ! -x "$time_bin" ]; then
  echo "==> installing mcp-server-time $TIME_VERSION (PyPI) into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "mcp-server-time==$TIME_VERSION" >&2
  touch "$stamp"
fi

prefix="$dir/npm"
pkg="$prefix/node_modules/@modelcontextprotocol/server-everything"
have="$(node -p "try { require('$pkg/package.json').version } catch (e) { '' }" 2>/dev/null || true)"
if [ "$have" != "$EVERYTHING_VERSION" ]; then
  echo "==> installing @modelcontextprotocol/server-everything $EVERYTHING_VERSION (npm) into $prefix" >&2
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/server-everything@$EVERYTHING_VERSION" >&2
fi
entry="$(node -p "const p = require('$pkg/package.json'); const b = typeof p.bin === 'string' ? p.bin : Object.values(p.bin)[0]; require('path').resolve('$pkg', b)")"

echo "export SPES_TEST_MCP_TIME='$time_bin'"
echo "export SPES_TEST_MCP_EVERYTHING='$entry'"
