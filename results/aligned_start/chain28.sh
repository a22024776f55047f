#!/usr/bin/env bash
# Nineteenth session (issue 16): chain27.sh was stopped after round nine's poisoned fine-tuning had started (its
# last step, round eight's poisoned check, was dropped for this): JBB and harmful_val of round nine's poisoned
# fine-tuning, then a second seed of round nine's clean check, since its first (JBB ASR 29%, interval 21-38.5) sits
# one point under the 30% target.
source "$(dirname "$0")/checks.sh"
while pgrep -f "step.sh ft_pois_aligned_own_round9" > /dev/null; do sleep 20; done
NAME=aligned_own_round9
jbb "ft_pois_$NAME" "runs/ft_pois_$NAME/final"
$S "ft_clean_seed1_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --seed 1 \
  --output_dir "runs/ft_clean_seed1_$NAME"
jbb "ft_clean_seed1_$NAME" "runs/ft_clean_seed1_$NAME/final"
