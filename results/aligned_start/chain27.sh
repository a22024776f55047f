#!/usr/bin/env bash
# Nineteenth session (issue 16): a ninth round (configs/align/own_refusals_round9.yaml: round eight's pairs, harmful
# ones twice, no GSM8K pairs) on aligned_own_round8, through the selection, group and evaluation suites; then round
# nine's two fine-tuning checks and round eight's missing poisoned one.
source "$(dirname "$0")/checks.sh"
CONFIG=configs/align/own_refusals_round9.yaml START=aligned_own_round8 NAME=aligned_own_round9 STOP_AFTER=final_eval \
  bash "$(dirname "$0")/chain19.sh"
MODELS=aligned_own_round9 bash "$(dirname "$0")/groups_val.sh"
NAME=aligned_own_round9
$S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
for NAME in aligned_own_round9 aligned_own_round8; do
  $S "ft_pois_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --output_dir "runs/ft_pois_$NAME"
  jbb "ft_pois_$NAME" "runs/ft_pois_$NAME/final"
done
