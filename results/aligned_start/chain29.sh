#!/usr/bin/env bash
# Nineteenth session (issue 16): after chain28.sh, a tenth round (configs/align/own_refusals_round10.yaml: round
# nine's pairs, harmful ones once) on aligned_own_round9 through the selection, group and evaluation suites, then its
# clean fine-tuning check.
source "$(dirname "$0")/checks.sh"
while pgrep -f "chain2[78].sh" > /dev/null; do sleep 20; done
CONFIG=configs/align/own_refusals_round10.yaml START=aligned_own_round9 NAME=aligned_own_round10 \
  STOP_AFTER=final_eval bash "$(dirname "$0")/chain19.sh"
MODELS=aligned_own_round10 bash "$(dirname "$0")/groups_val.sh"
NAME=aligned_own_round10
$S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
