#!/usr/bin/env bash
# Seventeenth session (issue 16): a fourth on-policy round (configs/align/own_refusals_round4.yaml) on the
# harmful-weighted round, through all of chain19.sh's steps.
CONFIG=configs/align/own_refusals_round4.yaml START=aligned_own_round2_harmful2 NAME=aligned_own_round4 \
  bash "$(dirname "$0")/chain19.sh"
