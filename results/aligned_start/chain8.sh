#!/usr/bin/env bash
# Session 2026-12-02, in parallel with chain7 (one core each, --threads 1): V2's harmful-heavy DPO stage stacked on
# al_deep (recovery + SafeInstr SFT), then selection suites and the clean-GSM8K check.
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align --threads 1"
$S align_al_deep_pref .venv/bin/tokensafe align --config configs/align/preference.yaml --data_dir $D --threads 1 \
  --refusal_sft false --model al_deep --pair_answers_model default --recovery_pairs true --recovery_n 30 \
  --pref_n_harmful 60 --pref_n_benign 0 --pref_n_borderline 0 --pref_n_twins 30 --pref_learning_rate 0.0001 \
  --name al_deep_pref --output_dir runs/align_al_deep_pref
$S sel_al_deep_pref .venv/bin/tokensafe eval --model al_deep_pref $SEL
$S ft_clean_al_deep_pref .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model al_deep_pref --harmful_share 0 --output_dir runs/ft_clean_al_deep_pref --threads 1
$S eval_ft_clean_al_deep_pref .venv/bin/tokensafe eval --model runs/ft_clean_al_deep_pref/final --name ft_clean_al_deep_pref \
  --suites harmful_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align_ft --threads 1
