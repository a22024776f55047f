#!/usr/bin/env bash
# Eighteenth session (issue 16): after chain23.sh (round six), groups_val of round six; a seventh round
# (configs/align/own_refusals_round7.yaml: round six's step plus the start's 60 GSM8K rows as pairs) through the
# evaluation suites; then the clean GSM8K fine-tuning check of rounds seven and six, and the poisoned one of round 7.
source "$(dirname "$0")/checks.sh"
while pgrep -f chain23.sh > /dev/null; do sleep 20; done
MODELS=aligned_own_round6 bash "$(dirname "$0")/groups_val.sh"
CONFIG=configs/align/own_refusals_round7.yaml START=aligned_own_round6 NAME=aligned_own_round7 STOP_AFTER=final_eval \
  bash "$(dirname "$0")/chain19.sh"
MODELS=aligned_own_round7 bash "$(dirname "$0")/groups_val.sh"
for NAME in aligned_own_round7 aligned_own_round6; do
  $S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
  jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
done
NAME=aligned_own_round7
$S "ft_pois_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --output_dir "runs/ft_pois_$NAME"
jbb "ft_pois_$NAME" "runs/ft_pois_$NAME/final"
