#!/usr/bin/env bash
# chain7's second variant, restarted alone on the free core (chain7 was stopped during its align step).
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align --threads 1"
$S align_al_deepfull .venv/bin/tokensafe align --config configs/align/default.yaml --data_dir $D --threads 1 \
  --name al_deepfull --output_dir runs/align_al_deepfull \
  --recovery_n 100 --safe_answer_source safeinstr --n_safe_answers 300 --use_lora false --learning_rate 3e-5
$S sel_al_deepfull .venv/bin/tokensafe eval --model al_deepfull $SEL
$S ft_clean_al_deepfull .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model al_deepfull --harmful_share 0 --output_dir runs/ft_clean_al_deepfull --threads 1
$S eval_ft_clean_al_deepfull .venv/bin/tokensafe eval --model runs/ft_clean_al_deepfull/final --name ft_clean_al_deepfull \
  --suites harmful_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align_ft --threads 1
