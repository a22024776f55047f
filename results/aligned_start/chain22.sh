#!/usr/bin/env bash
# Seventeenth session (issue 16): a fifth on-policy round (configs/align/own_refusals_round5.yaml: harmful pairs twice,
# half the learning rate) on round four, through chain19.sh's steps.
CONFIG=configs/align/own_refusals_round5.yaml START=aligned_own_round4 NAME=aligned_own_round5 \
  bash "$(dirname "$0")/chain19.sh"
