#!/usr/bin/env bash
# Eleventh session (issue 16). (1) The 15-minute budget: configs/align/deep.yaml with --padding_free true (packed
# micro-batches, logits only where labelled: the same loss and batches, benchmarks/bench_padding_free.py), from an
# EMPTY cache (self-answers and the model conversion included), on 2 otherwise idle cores; judged against
# aligned_deep on the selection suites, then the evaluation suites and the clean fine-tuning check for the record.
# (2) Is deep_robust's 33% poisoned ASR the start or the attack? The same poisoned check at a 20% share.
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
mkdir -p results/aligned_start/logs
SEL="--suites harmful_val,borderline_val,twins_val,sensitive_val --subset first --judge keyword --data_dir $D"
EMPTY=/tmp/aligncache_packed
rm -rf "$EMPTY"
V=$EMPTY/models/aligned_deep_packed
$S align_deep_packed env TOKENSAFE_CACHE_DIR=$EMPTY /usr/bin/time -v .venv/bin/tokensafe align \
  --config configs/align/deep.yaml --padding_free true --name aligned_deep_packed --data_dir $D \
  --output_dir runs/align_deep_packed
$S sel_deep_packed .venv/bin/tokensafe eval --model $V --name aligned_deep_packed $SEL --output_dir runs/eval_align
$S final_eval_deep_packed .venv/bin/tokensafe eval --model $V --name aligned_deep_packed \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S ft_clean_deep_packed .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $V --harmful_share 0 --output_dir runs/ft_clean_deep_packed
$S final_ftclean_deep_packed .venv/bin/tokensafe eval --model runs/ft_clean_deep_packed/final \
  --name ft_clean_deep_packed --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S ft_pois20_deep_lr1e4 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model aligned_deep_lr1e4 --harmful_share 0.2 --output_dir runs/ft_pois20_deep_lr1e4
$S final_ftpois20_deep_lr1e4 .venv/bin/tokensafe eval --model runs/ft_pois20_deep_lr1e4/final \
  --name ft_pois20_deep_lr1e4 --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S sel_ftpois20_deep_lr1e4 .venv/bin/tokensafe eval --model runs/ft_pois20_deep_lr1e4/final \
  --name ft_pois20_deep_lr1e4 --suites harmful_val --subset first --judge keyword --data_dir $D \
  --output_dir runs/eval_align
