#!/usr/bin/env bash
# Benign fine-tuning robustness (clean GSM8K, --harmful_share 0) of the baseline and of the variant, then the
# variant on the evaluation suites. One OpenMP thread (shared machine).
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
while kill -0 24227 2>/dev/null; do sleep 10; done
for v in aligned aligned_pref_v1; do
  $S ft_clean_$v .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D --model $v \
    --harmful_share 0 --output_dir runs/ft_clean_$v --threads 1
  $S eval_ft_clean_$v .venv/bin/tokensafe eval --model runs/ft_clean_$v/final --name ft_clean_$v \
    --suites harmful_val,jbb_harmful --subset first --judge keyword --data_dir $D --output_dir runs/eval_align_ft
done
$S final_pref_v1 .venv/bin/tokensafe eval --model aligned_pref_v1 --suites jbb_harmful,jbb_benign,xstest_safe,sst2:200 \
  --subset first --judge keyword --data_dir $D --output_dir runs/eval_align_final
