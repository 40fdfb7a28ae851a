#!/usr/bin/env bash
# Issue 25's measurement in recipes/sample/RESULTS.md: the same budget on the recipe's corpus from nothing vs from
# the encoder of a checkpoint trained on other data (`korasr train --init`). The stand-in for a released
# checkpoint is one korasr trains itself here (no model hub is reachable): the sample corpus with another seed and the
# narrow variety (other sentences; 3 of the 12 voices), a BPE tokenizer of 80 pieces (other pieces than the recipe's
# unigram 80, so the head is new), 600 steps. Then the recipe's model, STEPS steps (default 300) with the recipe's
# augmentation, from nothing and from that encoder, same seed, scored on eval_clean, eval_other and eval_novel.
# Needs the recipe's corpus, manifests, tokenizer and noise set (`make tokenizer noise`). About 15 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
K=.venv/bin/korasr
STEPS=${STEPS:-300}
OUT=${OUT:-exp/transfer}
SRC=data/transfer
TOKENIZER=${TOKENIZER:-tokenizers/sample/jamo_unigram_v80}
NOISE=${NOISE:-manifests/sample/noise/noise_cuts.jsonl.gz}
start=$(date +%s)
[ -d "$SRC/KsponSpeech" ] || $K sample-corpus "$SRC/KsponSpeech" --seed 11 --variety narrow --quiet
$K prepare kspon --root "$SRC/KsponSpeech" --out manifests/transfer --audio-dir "$SRC/audio" --form phonetic --quiet
$K tokenizer build --manifest manifests/transfer/train.jsonl --unit jamo --type bpe --vocab 80 \
  --out tokenizers/transfer/jamo_bpe_v80 >/dev/null
source_nemo=$($K train --recipe recipes/sample model.tokenizer.dir=tokenizers/transfer/jamo_bpe_v80 \
  model.train_ds.manifest_filepath=manifests/transfer/train.jsonl \
  model.validation_ds.manifest_filepath=manifests/transfer/dev.jsonl \
  "exp_manager.exp_dir=$OUT/source" trainer.max_steps=600 model.train_ds.perturb_speed=false | tail -1)
echo "transfer source: $source_nemo ($(( $(date +%s) - start )) s)"
for run in scratch init; do
  start=$(date +%s)
  init=()
  [ "$run" = init ] && init=(--init "$source_nemo")
  $K train --recipe recipes/sample "model.tokenizer.dir=$TOKENIZER" "model.train_ds.noise_path=$NOISE" \
    "exp_manager.exp_dir=$OUT/$run" "trainer.max_steps=$STEPS" "${init[@]}" \
    --evaluate manifests/sample/eval_clean.jsonl --evaluate manifests/sample/eval_other.jsonl \
    --evaluate manifests/sample/eval_novel.jsonl
  echo "transfer $run: $(( $(date +%s) - start )) s"
done
