#!/usr/bin/env bash
# Eighteenth session (issue 16): after chain23.sh (round six), groups_val of round six; a seventh round
# (configs/align/own_refusals_round7.yaml: round six's step plus the start's 60 GSM8K rows as pairs) through the
# evaluation suites. (Its fine-tuning checks moved to chain25.sh, after round eight.)
source "$(dirname "$0")/checks.sh"
while pgrep -f chain23.sh > /dev/null; do sleep 20; done
MODELS=aligned_own_round6 bash "$(dirname "$0")/groups_val.sh"
CONFIG=configs/align/own_refusals_round7.yaml START=aligned_own_round6 NAME=aligned_own_round7 STOP_AFTER=final_eval \
  bash "$(dirname "$0")/chain19.sh"
