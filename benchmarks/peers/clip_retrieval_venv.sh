#!/usr/bin/env bash
# A separate virtualenv with clip-retrieval, for the embedder benchmark ONLY
# (benchmarks/embedder_vs_clip_retrieval.py). It is not part of clipaudit's install.
#
#   bash benchmarks/peers/clip_retrieval_venv.sh          # prints the venv's path
#
# Cached and idempotent: the venv lives under ~/.cache/clipaudit/peers/clip-retrieval
# and is rebuilt only when the pins below change (a stamp keyed on this file's hash).
# clip-retrieval 2.45 needs open_clip < 3, numpy < 2, webdataset 0.2.x (0.2.86) and
# setuptools < 81 (it imports pkg_resources). torch/torchvision are pinned to the same
# versions as requirements.txt, from the same index, so uv's cache (~/.cache/uv)
# supplies them instead of a new multi-GB download.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
UV="${UV:-$ROOT/.venv/bin/uv}"                     # the uv the Makefile installs
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"         # same interpreter as the project
DEST="${CLIP_RETRIEVAL_VENV:-$HOME/.cache/clipaudit/peers/clip-retrieval}"
TORCH="$(grep -E '^torch==' "$ROOT/requirements.txt")"
TORCHVISION="$(grep -E '^torchvision==' "$ROOT/requirements.txt")"
PINS=(
  "clip-retrieval==2.45.0"
  "open_clip_torch<3"
  "numpy<2"
  "webdataset==0.2.86"
  "setuptools<81"
  "$TORCH"
  "$TORCHVISION"
)
STAMP="$DEST/.installed-$( (cat "${BASH_SOURCE[0]}"; printf '%s\n' "${PINS[@]}") | sha256sum | cut -c1-16)"

if [[ -f "$STAMP" && -x "$DEST/bin/clip-retrieval" ]]; then
  echo "$DEST"
  exit 0
fi
echo "building the clip-retrieval peer venv in $DEST (benchmark only)" >&2
mkdir -p "$(dirname "$DEST")"
"$UV" venv --quiet --allow-existing --python "$PYTHON" "$DEST" >&2
"$UV" pip install --quiet --compile-bytecode --python "$DEST/bin/python" "${PINS[@]}" >&2
"$DEST/bin/python" -c "import clip_retrieval, open_clip, numpy; print('clip-retrieval peer venv: open_clip', open_clip.__version__, 'numpy', numpy.__version__)" >&2
rm -f "$DEST"/.installed-* && touch "$STAMP"
echo "$DEST"
