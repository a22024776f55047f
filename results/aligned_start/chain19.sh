#!/usr/bin/env bash
# Sixteenth session (issue 16). A preference-only config CONFIG (default configs/align/own_refusals_sensitive.yaml) on
# START (default aligned_deep_gsm8k60), saved as NAME. Same order as chain18.sh: selection suites, evaluation suites,
# then the issue's two fine-tuning checks (clean GSM8K, 10% BeaverTails) with JBB and harmful_val after each
# (skipped with STOP_AFTER=final_eval).
source "$(dirname "$0")/checks.sh"
CONFIG=${CONFIG:-configs/align/own_refusals_sensitive.yaml}
START=${START:-aligned_deep_gsm8k60}
NAME=${NAME:-aligned_own_sensitive}
$S "align_$NAME" .venv/bin/tokensafe align --config "$CONFIG" --data_dir $D --model "$START" \
  --name "$NAME" --output_dir "runs/align_$NAME"
$S "sel_$NAME" .venv/bin/tokensafe eval --model "$NAME" --name "$NAME" $SEL --output_dir runs/eval_align
$S "final_eval_$NAME" .venv/bin/tokensafe eval --model "$NAME" --name "$NAME" \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
# STOP_AFTER=final_eval: only the suites (the fine-tuning checks are run later, for the rounds worth them).
[ "${STOP_AFTER:-}" = final_eval ] && exit 0
$S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
$S "ft_pois_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --output_dir "runs/ft_pois_$NAME"
jbb "ft_pois_$NAME" "runs/ft_pois_$NAME/final"
