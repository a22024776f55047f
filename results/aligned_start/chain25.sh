#!/usr/bin/env bash
# Eighteenth session (issue 16): after chain24.sh (round seven), groups_val of round seven; an eighth round
# (configs/align/own_refusals_round8.yaml: round seven's recipe plus benign pairs from groups_train.txt) through the
# evaluation suites and groups_val; then the issue's two fine-tuning checks of round eight, and the clean one of
# round seven.
source "$(dirname "$0")/checks.sh"
while pgrep -f "chain2[34].sh|chain19.sh" > /dev/null; do sleep 20; done
MODELS=aligned_own_round7 bash "$(dirname "$0")/groups_val.sh"
CONFIG=configs/align/own_refusals_round8.yaml START=aligned_own_round7 NAME=aligned_own_round8 STOP_AFTER=final_eval \
  bash "$(dirname "$0")/chain19.sh"
MODELS=aligned_own_round8 bash "$(dirname "$0")/groups_val.sh"
for NAME in aligned_own_round8 aligned_own_round7; do
  $S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
  jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
  [ "$NAME" = aligned_own_round8 ] || continue
  $S "ft_pois_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --output_dir "runs/ft_pois_$NAME"
  jbb "ft_pois_$NAME" "runs/ft_pois_$NAME/final"
done
