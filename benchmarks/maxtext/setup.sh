#!/usr/bin/env bash
# Build the MaxText 0.2.5 venv used by compile.py, from nothing, with pyenv's Python 3.12.
#   bash benchmarks/maxtext/setup.sh            # -> /work/main/.venv-maxtext (repo root/.venv-maxtext)
#   VENV=/some/dir bash benchmarks/maxtext/setup.sh
# Idempotent: skips when the venv exists and was built from the same requirements.txt
# (a stamp file inside the venv records its sha256). FORCE=1 rebuilds.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$ROOT/.venv-maxtext}"
MAXTEXT_VERSION="0.2.5"
REQ="$HERE/requirements.txt"
STAMP="$VENV/.maxtext-setup-stamp"
want_stamp="maxtext==$MAXTEXT_VERSION $(sha256sum "$REQ" | cut -d' ' -f1)"

if [[ "${FORCE:-0}" != "1" && -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  echo "[setup] $VENV is up to date ($want_stamp); skipping"
  exit 0
fi

# pyenv's Python 3.12 (maxtext 0.2.5 requires Python >= 3.12).
PY="${PYTHON312:-}"
if [[ -z "$PY" ]]; then
  for cand in "$HOME"/.pyenv/versions/3.12*/bin/python; do
    [[ -x "$cand" ]] && PY="$cand"
  done
fi
if [[ -z "$PY" ]] && command -v python3.12 >/dev/null; then PY="$(command -v python3.12)"; fi
if [[ -z "$PY" ]]; then echo "[setup] no Python 3.12 found (looked in ~/.pyenv/versions/3.12*)" >&2; exit 1; fi
echo "[setup] python: $PY ($("$PY" --version))"

rm -rf "$VENV"
"$PY" -m venv "$VENV"
# Keep the venv out of git even though the repo's .gitignore only lists .venv/.
echo '*' > "$VENV/.gitignore"

PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip
# maxtext itself: no base deps in its metadata; its extras ([tpu], [cuda12], ...) are
# 200+ packages each, so it goes in --no-deps and its runtime needs come from requirements.txt.
"${PIP[@]}" install -q --no-deps "maxtext==$MAXTEXT_VERSION"
"${PIP[@]}" install -q --no-deps -r "$REQ"
"${PIP[@]}" check

# Smoke test: the AOT-compile entry point imports, and libtpu is found.
JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 DECOUPLE_GCLOUD=TRUE "$VENV/bin/python" - <<'EOF'
from importlib import metadata
import maxtext.trainers.pre_train.train_compile  # noqa: F401
import libtpu  # noqa: F401
print("[setup] ok:", {p: metadata.version(p) for p in ("maxtext", "jax", "jaxlib", "libtpu", "flax")})
EOF

echo "$want_stamp" > "$STAMP"
echo "[setup] done: $VENV ($(du -sh "$VENV" | cut -f1))"
