#!/usr/bin/env bash
# Tenth session (issue 16): does a larger full-fine-tuning learning rate deepen the refusal margin enough to survive
# clean fine-tuning, at no extra time? deep.yaml (lr 3e-5, the only full-FT rate tried) with lr 1e-4, everything
# else equal (same data, seed and steps; the self-answers come from the cache). Judged on the selection suites and
# the clean-fine-tuning harmful_val check first; the evaluation suites only if it is chosen.
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
mkdir -p results/aligned_start/logs
SEL="--suites harmful_val,borderline_val,twins_val,sensitive_val --subset first --judge keyword --data_dir $D"
V=aligned_deep_lr1e4
$S align_deep_lr1e4 /usr/bin/time -v .venv/bin/tokensafe align --config configs/align/deep.yaml \
  --learning_rate 0.0001 --name $V --data_dir $D --output_dir runs/align_deep_lr1e4
$S sel_deep_lr1e4 .venv/bin/tokensafe eval --model $V $SEL --output_dir runs/eval_align
$S ft_clean_deep_lr1e4 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $V --harmful_share 0 --output_dir runs/ft_clean_deep_lr1e4
$S sel_ftclean_deep_lr1e4 .venv/bin/tokensafe eval --model runs/ft_clean_deep_lr1e4/final \
  --name ft_clean_deep_lr1e4 --suites harmful_val --subset first --judge keyword --data_dir $D \
  --output_dir runs/eval_align
