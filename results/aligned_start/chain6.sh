#!/usr/bin/env bash
# Session 2026-12-02: from-scratch align variants (SFT levers, no DPO), each followed by the selection suites and
# the clean-GSM8K robustness check on harmful_val. Idle cores: --threads 2, short OpenMP spin (contention-safe).
cd /work/main
export GOMP_SPINCOUNT=10000
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align --threads 2"
ftcheck() {  # <model name or path> <label>
  $S ft_clean_$2 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
    --model $1 --harmful_share 0 --output_dir runs/ft_clean_$2 --threads 2
  $S eval_ft_clean_$2 .venv/bin/tokensafe eval --model runs/ft_clean_$2/final --name ft_clean_$2 \
    --suites harmful_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align_ft --threads 2
}
variant() {  # <name> <align flags...>
  name=$1; shift
  $S align_$name .venv/bin/tokensafe align --config configs/align/default.yaml --data_dir $D --threads 2 \
    --name $name --output_dir runs/align_$name "$@"
  $S sel_$name .venv/bin/tokensafe eval --model $name $SEL
  ftcheck $name $name
}
ftcheck aligned aligned
variant al_rec100 --recovery_n 100
variant al_si300 --safe_answer_source safeinstr --n_safe_answers 300
variant al_full --use_lora false --learning_rate 3e-5
