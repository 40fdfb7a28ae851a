#!/usr/bin/env bash
# The augmentation ablation in recipes/sample/RESULTS.md: the sample recipe's default model and schedule (1,000
# steps, seed 0, the shuffling seed fixed) trained four times on the same corpus, with no augmentation, noise
# mixing only, speed perturbation only, and both (the default). Needs the corpus, manifests, tokenizer and noise
# set (`make tokenizer noise`). About 13 min per run on 2 CPU cores. RUNS="none speed" runs a subset.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOKENIZER=${TOKENIZER:-tokenizers/sample/jamo_unigram_v80}
NOISE=${NOISE:-manifests/sample/noise/noise_cuts.jsonl.gz}
OUT=${OUT:-exp/ablation}
for run in ${RUNS:-both none noise speed}; do
  case $run in
    none) aug=(model.train_ds.perturb_speed=false) ;;
    noise) aug=(model.train_ds.perturb_speed=false "model.train_ds.noise_path=$NOISE") ;;
    speed) aug=(model.train_ds.perturb_speed=true) ;;
    both) aug=(model.train_ds.perturb_speed=true "model.train_ds.noise_path=$NOISE") ;;
    *) echo "unknown run '$run' (none, noise, speed, both)" >&2; exit 2 ;;
  esac
  start=$(date +%s)
  .venv/bin/korasr train --recipe recipes/sample "model.tokenizer.dir=$TOKENIZER" "exp_manager.exp_dir=$OUT/$run" \
    "${aug[@]}" --evaluate manifests/sample/eval_clean.jsonl --evaluate manifests/sample/eval_other.jsonl \
    --evaluate manifests/sample/eval_novel.jsonl
  echo "ablation $run: $(( $(date +%s) - start )) s"
done
