#!/usr/bin/env bash
# al_deepfull (best on the selection suites and the clean-FT selection check) on the evaluation suites and JBB
# after clean fine-tuning.
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
EV="--judge keyword --data_dir $D --output_dir runs/eval_align_final --threads 1"
$S final_ftclean_jbb_al_deepfull .venv/bin/tokensafe eval --model runs/ft_clean_al_deepfull/final --name ft_clean_al_deepfull --suites jbb_harmful $EV
$S final_eval_al_deepfull .venv/bin/tokensafe eval --model al_deepfull --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 $EV
