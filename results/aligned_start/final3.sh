#!/usr/bin/env bash
# al_deepfull (configs/align/deep.yaml): the poisoned fine-tuning check (GSM8K + 10% BeaverTails, the shipped SFT
# settings), JBB ASR of the fine-tuned model; it must stay >= 60% for a defence to have something to show.
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
EV="--judge keyword --data_dir $D --output_dir runs/eval_align_final --threads 1"
$S ft_pois_al_deepfull .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model al_deepfull --output_dir runs/ft_pois_al_deepfull --threads 1
$S final_ftpois_jbb_al_deepfull .venv/bin/tokensafe eval --model runs/ft_pois_al_deepfull/final --name ft_pois_al_deepfull --suites jbb_harmful $EV
