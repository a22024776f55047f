#!/usr/bin/env bash
# Seventeenth session (issue 16): the new selection suite groups_val on every start of the study still in the cache
# (MODELS overrides the list). Does it see what XSTest showed after round three, before the evaluation suites do?
source "$(dirname "$0")/checks.sh"
MODELS=${MODELS:-"aligned_deep aligned_deep_gsm8k60 aligned_own_deep_gsm8k60 aligned_own_sensitive aligned_own_round2 aligned_own_round3"}
for m in $MODELS; do
  $S "groups_$m" nice -n 10 .venv/bin/tokensafe eval --model "$m" --name "$m" --suites groups_val --judge keyword \
    --data_dir $D --threads 1 --output_dir runs/eval_align_groups
done
