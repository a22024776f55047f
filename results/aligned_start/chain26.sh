#!/usr/bin/env bash
# Eighteenth session (issue 16): the clean GSM8K fine-tuning check of rounds seven and six (round seven is one more
# damped round on round six, with the 60 GSM8K pairs): does a round with those pairs make the start more robust?
source "$(dirname "$0")/checks.sh"
for NAME in aligned_own_round7 aligned_own_round6; do
  $S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
  jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
done
