#!/usr/bin/env bash
# Tenth session (issue 16), after chain11: aligned_deep_lr1e4 (full fine-tuning at lr 1e-4) cut the clean-fine-tuning
# harmful_val ASR from 64.1% to 25.6% with the other selection suites level or better, so it is measured on the
# evaluation suites and both fine-tuning checks; then lr 2e-4 (does the trend go on?), judged on the selection
# suites and the clean-fine-tuning harmful_val check like chain11.
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
mkdir -p results/aligned_start/logs
SEL="--suites harmful_val,borderline_val,twins_val,sensitive_val --subset first --judge keyword --data_dir $D"
V=aligned_deep_lr1e4
$S final_eval_deep_lr1e4 .venv/bin/tokensafe eval --model $V \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S final_ftclean_deep_lr1e4 .venv/bin/tokensafe eval --model runs/ft_clean_deep_lr1e4/final \
  --name ft_clean_deep_lr1e4 --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S ft_pois_deep_lr1e4 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $V --output_dir runs/ft_pois_deep_lr1e4
$S final_ftpois_deep_lr1e4 .venv/bin/tokensafe eval --model runs/ft_pois_deep_lr1e4/final \
  --name ft_pois_deep_lr1e4 --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
V=aligned_deep_lr2e4
$S align_deep_lr2e4 /usr/bin/time -v .venv/bin/tokensafe align --config configs/align/deep.yaml \
  --learning_rate 0.0002 --name $V --data_dir $D --output_dir runs/align_deep_lr2e4
$S sel_deep_lr2e4 .venv/bin/tokensafe eval --model $V $SEL --output_dir runs/eval_align
$S ft_clean_deep_lr2e4 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $V --harmful_share 0 --output_dir runs/ft_clean_deep_lr2e4
$S sel_ftclean_deep_lr2e4 .venv/bin/tokensafe eval --model runs/ft_clean_deep_lr2e4/final \
  --name ft_clean_deep_lr2e4 --suites harmful_val --subset first --judge keyword --data_dir $D \
  --output_dir runs/eval_align
