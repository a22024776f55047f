#!/usr/bin/env bash
# Fifteenth session (issue 16). The preference stage with the start's own refusals (configs/align/own_refusals.yaml)
# on an existing start: START (default aligned_deep), saved as aligned_own_<START>. Order by what decides first: the
# new model on the selection suites (is over-refusal down with harmful refusal kept?), then the evaluation suites,
# then the two fine-tuning checks of the issue (clean GSM8K, 10% BeaverTails) with JBB and harmful_val after each.
# The steps are chain19.sh's (written in the sixteenth session for any preference-only config).
START=${START:-aligned_deep}
CONFIG=configs/align/own_refusals.yaml START=$START NAME=aligned_own_${START#aligned_} \
  exec bash "$(dirname "$0")/chain19.sh"
