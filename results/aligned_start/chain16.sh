#!/usr/bin/env bash
# Twelfth session, second part (issue 16): the Alpaca check of chain15.sh again with the local split (`--task_split
# 1k`: the data directory holds Alpaca's 1k sample, the full "train" split is hub-only and the run failed offline).
# Clean fine-tuning (configs/train/sft_gsm8k_poisoned.yaml's LoRA and optimiser, 270 Alpaca rows, no harmful rows) of
# both starts: a task neither start was aligned on, to tell whether deep_gsm8k's robustness is GSM8K-only.
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
FT="--config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D"
for start in aligned_deep aligned_deep_gsm8k; do
  $S "ft_alpaca_${start}" .venv/bin/tokensafe train $FT --model "$start" --task alpaca --task_split 1k \
    --harmful_share 0 --output_dir "runs/ft_alpaca_${start}"
  $S "final_ft_alpaca_${start}" .venv/bin/tokensafe eval --model "runs/ft_alpaca_${start}/final" \
    --name "ft_alpaca_${start}" --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
  $S "sel_ft_alpaca_${start}" .venv/bin/tokensafe eval --model "runs/ft_alpaca_${start}/final" \
    --name "ft_alpaca_${start}" --suites harmful_val --subset first --judge keyword --data_dir $D \
    --output_dir runs/eval_align
done
