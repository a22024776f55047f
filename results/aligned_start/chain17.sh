#!/usr/bin/env bash
# Fourteenth session (issue 16). A smaller dose of GSM8K rows in the alignment: configs/align/deep_gsm8k60.yaml
# (= deep_gsm8k.yaml with 60 GSM8K train rows instead of 200). Order by what the issue needs first: the start, the
# two fine-tuning checks (clean GSM8K, then 10% BeaverTails) with JBB and harmful_val after each, then the start on the
# selection and evaluation suites. Each step logs to results/aligned_start/logs/ and runs.jsonl (step.sh); a rerun
# after a stop redoes only the unfinished steps' work (the align and train caches keep what finished).
source "$(dirname "$0")/checks.sh"
$S align_deep_gsm8k60 .venv/bin/tokensafe align --config configs/align/deep_gsm8k60.yaml --data_dir $D \
  --output_dir runs/align_deep_gsm8k60
$S ft_clean_deep_gsm8k60 .venv/bin/tokensafe train $FT --model aligned_deep_gsm8k60 --harmful_share 0 \
  --output_dir runs/ft_clean_deep_gsm8k60
jbb ft_clean_deep_gsm8k60 runs/ft_clean_deep_gsm8k60/final
$S ft_pois_deep_gsm8k60 .venv/bin/tokensafe train $FT --model aligned_deep_gsm8k60 --output_dir runs/ft_pois_deep_gsm8k60
jbb ft_pois_deep_gsm8k60 runs/ft_pois_deep_gsm8k60/final
$S sel_deep_gsm8k60 .venv/bin/tokensafe eval --model aligned_deep_gsm8k60 --name aligned_deep_gsm8k60 $SEL \
  --output_dir runs/eval_align
$S final_eval_deep_gsm8k60 .venv/bin/tokensafe eval --model aligned_deep_gsm8k60 --name aligned_deep_gsm8k60 \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
