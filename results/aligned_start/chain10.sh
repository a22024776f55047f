#!/usr/bin/env bash
# Ninth session (issue 16): aligned_deep + 149 self-answered sensitive-subject benign requests, on 2 cores with the
# headline chain paused. Selection suites first (the variant is judged there), then the evaluation suites and the
# clean-fine-tuning check for the record.
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val,sensitive_val --subset first --judge keyword --data_dir $D"
$S align_deep_sensitive /usr/bin/time -v .venv/bin/tokensafe align --config configs/align/deep_sensitive.yaml \
  --data_dir $D --output_dir runs/align_deep_sensitive
$S sel_aligned_deep_rebuilt .venv/bin/tokensafe eval --model aligned_deep $SEL \
  --output_dir runs/eval_align
$S sel_deep_sensitive .venv/bin/tokensafe eval --model aligned_deep_sensitive $SEL --output_dir runs/eval_align
$S final_eval_deep_sensitive .venv/bin/tokensafe eval --model aligned_deep_sensitive \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S ft_clean_deep_sensitive .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model aligned_deep_sensitive --harmful_share 0 --output_dir runs/ft_clean_deep_sensitive
$S final_ftclean_deep_sensitive .venv/bin/tokensafe eval --model runs/ft_clean_deep_sensitive/final \
  --name ft_clean_deep_sensitive --suites harmful_val,jbb_harmful --judge keyword --data_dir $D \
  --output_dir runs/eval_align_final
