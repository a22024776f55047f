#!/usr/bin/env bash
# Eighteenth session (issue 16): a sixth on-policy round (configs/align/own_refusals_round6.yaml: every pair once,
# lr 5e-5) on round five, through chain19.sh's steps up to the evaluation suites.
CONFIG=configs/align/own_refusals_round6.yaml START=aligned_own_round5 NAME=aligned_own_round6 STOP_AFTER=final_eval \
  bash "$(dirname "$0")/chain19.sh"
