#!/usr/bin/env bash
# Fifteenth session (issue 16). The preference stage with the start's own refusals (configs/align/own_refusals.yaml)
# on an existing start: START (default aligned_deep), saved as aligned_own_<START>. Order by what decides first: the
# new model on the selection suites (is over-refusal down with harmful refusal kept?), then the evaluation suites,
# then the two fine-tuning checks of the issue (clean GSM8K, 10% BeaverTails) with JBB and harmful_val after each.
source "$(dirname "$0")/checks.sh"
START=${START:-aligned_deep}
NAME=aligned_own_${START#aligned_}
$S "align_$NAME" .venv/bin/tokensafe align --config configs/align/own_refusals.yaml --data_dir $D --model "$START" \
  --name "$NAME" --output_dir "runs/align_$NAME"
$S "sel_$NAME" .venv/bin/tokensafe eval --model "$NAME" --name "$NAME" $SEL --output_dir runs/eval_align
$S "final_eval_$NAME" .venv/bin/tokensafe eval --model "$NAME" --name "$NAME" \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
$S "ft_clean_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --harmful_share 0 --output_dir "runs/ft_clean_$NAME"
jbb "ft_clean_$NAME" "runs/ft_clean_$NAME/final"
$S "ft_pois_$NAME" .venv/bin/tokensafe train $FT --model "$NAME" --output_dir "runs/ft_pois_$NAME"
jbb "ft_pois_$NAME" "runs/ft_pois_$NAME/final"
