#!/usr/bin/env bash
# The BERT tier against ONNX Runtime on all-MiniLM-L6-v2, same machine, prompts and thread counts,
# both sides in one run (scripts/onnx-compare.py says how). Not part of CI.
#
#   scripts/onnx-compare.sh [--threads 1,2] [--lengths 16,32,128,512] [--iterations 100] [--rounds 3]
#
# Sets up onnxruntime, onnx, numpy, safetensors and tokenizers from PyPI in a venv
# (ONNX_VENV, default target/onnx-venv), fills the hub cache with scripts/fetch-minilm.sh, and times
# MODEL_ROUTER (default target/release/model-router, built with `cargo build --release` if missing).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${ONNX_VENV:-$root/target/onnx-venv}"
binary="${MODEL_ROUTER:-$root/target/release/model-router}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check onnxruntime onnx numpy safetensors tokenizers
if [ ! -x "$binary" ]; then
  (cd "$root" && cargo build --release --bin model-router)
fi
snapshot="$("$root/scripts/fetch-minilm.sh")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$venv/bin/python" "$root/scripts/onnx-compare.py" --snapshot "$snapshot" --binary "$binary" \
  --fixture "$root/../shared/fixtures/minilm-reference.json" --work "$work" "$@"
