#!/usr/bin/env bash
# The chosen variant on the evaluation suites and the two fine-tuning checks, plus the baseline's clean-FT JBB ASR.
# usage: results/aligned_start/final.sh <chosen named model>
cd /work/main
export OMP_NUM_THREADS=1
C=$1
S=results/aligned_start/step.sh; D=/work/shared/data
EV="--judge keyword --data_dir $D --output_dir runs/eval_align_final --threads 1"
$S final_eval_$C .venv/bin/tokensafe eval --model $C --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 $EV
$S final_ftclean_jbb_$C .venv/bin/tokensafe eval --model runs/ft_clean_$C/final --name ft_clean_$C --suites jbb_harmful $EV
$S ft_pois_$C .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $C --output_dir runs/ft_pois_$C --threads 1
$S final_ftpois_jbb_$C .venv/bin/tokensafe eval --model runs/ft_pois_$C/final --name ft_pois_$C --suites jbb_harmful $EV
$S final_ftclean_jbb_aligned .venv/bin/tokensafe eval --model runs/ft_clean_aligned/final --name ft_clean_aligned --suites jbb_harmful $EV
