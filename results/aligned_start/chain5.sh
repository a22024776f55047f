#!/usr/bin/env bash
cd /work/main
export OMP_NUM_THREADS=1
while kill -0 28162 2>/dev/null; do sleep 5; done
results/aligned_start/step.sh eval_ft_clean_aligned_pref_v2 .venv/bin/tokensafe eval --model runs/ft_clean_aligned_pref_v2/final \
  --name ft_clean_aligned_pref_v2 --suites harmful_val,jbb_harmful --subset first --judge keyword \
  --data_dir /work/shared/data --output_dir runs/eval_align_ft
