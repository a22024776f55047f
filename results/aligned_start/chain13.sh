#!/usr/bin/env bash
# Tenth session (issue 16), after chain12's first half: aligned_deep_lr1e4 is robust to clean fine-tuning (JBB ASR 26%)
# but also to the poison (33%, target >= 60%: nothing left for a defence to show), so the lr 2e-4 run of chain12 was
# stopped and an intermediate rate is tried: lr 6e-5. Chosen on selection suites: harmful_val after clean and after
# poisoned fine-tuning (the poisoned one also for aligned_deep, whose poisoned fine-tuning is the p10 experiment's
# SFT seed-0 model: same config, and for lr1e4); JBB and the other evaluation suites measured for the record.
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
mkdir -p results/aligned_start/logs
SEL="--suites harmful_val,borderline_val,twins_val,sensitive_val --subset first --judge keyword --data_dir $D"
HV="--suites harmful_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align"
V=aligned_deep_lr6e5
$S align_deep_lr6e5 /usr/bin/time -v .venv/bin/tokensafe align --config configs/align/deep.yaml \
  --learning_rate 0.00006 --name $V --data_dir $D --output_dir runs/align_deep_lr6e5
$S sel_deep_lr6e5 .venv/bin/tokensafe eval --model $V $SEL --output_dir runs/eval_align
$S ft_clean_deep_lr6e5 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $V --harmful_share 0 --output_dir runs/ft_clean_deep_lr6e5
$S sel_ftclean_deep_lr6e5 .venv/bin/tokensafe eval --model runs/ft_clean_deep_lr6e5/final --name ft_clean_deep_lr6e5 $HV
$S ft_pois_deep_lr6e5 .venv/bin/tokensafe train --config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D \
  --model $V --output_dir runs/ft_pois_deep_lr6e5
$S sel_ftpois_deep_lr6e5 .venv/bin/tokensafe eval --model runs/ft_pois_deep_lr6e5/final --name ft_pois_deep_lr6e5 $HV
$S sel_ftpois_deep_lr1e4 .venv/bin/tokensafe eval --model runs/ft_pois_deep_lr1e4/final --name ft_pois_deep_lr1e4 $HV
$S sel_ftpois_deep .venv/bin/tokensafe eval --model runs/experiment/models/6fb1438a7cbd0522/final \
  --name ft_pois_deep $HV
$S final_ftboth_deep_lr6e5_clean .venv/bin/tokensafe eval --model runs/ft_clean_deep_lr6e5/final \
  --name ft_clean_deep_lr6e5 --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S final_ftboth_deep_lr6e5_pois .venv/bin/tokensafe eval --model runs/ft_pois_deep_lr6e5/final \
  --name ft_pois_deep_lr6e5 --suites jbb_harmful --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S final_eval_deep_lr6e5 .venv/bin/tokensafe eval --model $V \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
