#!/usr/bin/env bash
# Seventeenth session (issue 16): round two's prompts asked again of round two's model, harmful pairs twice
# (configs/align/own_refusals_round2_harmful2.yaml), through all of chain19.sh's steps.
CONFIG=configs/align/own_refusals_round2_harmful2.yaml START=aligned_own_round2 NAME=aligned_own_round2_harmful2 \
  bash "$(dirname "$0")/chain19.sh"
