#!/usr/bin/env bash
# Session 2026-12-02 (after chain6's baseline check): two from-scratch variants that combine the SFT levers
# (recovery examples as SFT rows, SafeInstr safe answers), LoRA vs full fine-tuning; each followed by the selection
# suites and the clean-GSM8K robustness check on harmful_val. Helpers' tests share the CPU: --threads 1.
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align --threads 1"
ftcheck() {  # <model name or path> <label>
  $S ft_clean_$2 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
    --model $1 --harmful_share 0 --output_dir runs/ft_clean_$2 --threads 1
  $S eval_ft_clean_$2 .venv/bin/tokensafe eval --model runs/ft_clean_$2/final --name ft_clean_$2 \
    --suites harmful_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align_ft --threads 1
}
variant() {  # <name> <align flags...>
  name=$1; shift
  $S align_$name .venv/bin/tokensafe align --config configs/align/default.yaml --data_dir $D --threads 1 \
    --name $name --output_dir runs/align_$name "$@"
  $S sel_$name .venv/bin/tokensafe eval --model $name $SEL
  ftcheck $name $name
}
variant al_deep --recovery_n 100 --safe_answer_source safeinstr --n_safe_answers 300
variant al_deepfull --recovery_n 100 --safe_answer_source safeinstr --n_safe_answers 300 --use_lora false --learning_rate 3e-5
