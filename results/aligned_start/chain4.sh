#!/usr/bin/env bash
# V2: harmful-heavy pairs (V1 over-complied), then selection suites; then clean-FT robustness on harmful_val.
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align"
$S align_pref_v2 .venv/bin/tokensafe align --config configs/align/preference.yaml --data_dir $D --threads 1 \
  --refusal_sft false --model aligned --pair_answers_model default --recovery_pairs true --recovery_n 30 \
  --pref_n_harmful 60 --pref_n_benign 0 --pref_n_borderline 0 --pref_n_twins 30 --pref_learning_rate 0.0001 \
  --name aligned_pref_v2 --output_dir runs/align_pref_v2
$S sel_pref_v2 .venv/bin/tokensafe eval --model aligned_pref_v2 $SEL
$S ft_clean_aligned_pref_v2 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model aligned_pref_v2 --harmful_share 0 --output_dir runs/ft_clean_aligned_pref_v2 --threads 1
$S eval_ft_clean_aligned_pref_v2 .venv/bin/tokensafe eval --model runs/ft_clean_aligned_pref_v2/final \
  --name ft_clean_aligned_pref_v2 --suites harmful_val --subset first --judge keyword --data_dir $D \
  --output_dir runs/eval_align_ft
