#!/usr/bin/env bash
# Phase-2 chain (one heavy job at a time), all with one OpenMP thread (the shared machine's other core is busy).
cd /work/main
export OMP_NUM_THREADS=1
S=results/aligned_start/step.sh; D=/work/shared/data
SEL="--suites harmful_val,borderline_val,twins_val --subset first --judge keyword --data_dir $D --output_dir runs/eval_align"
while kill -0 24198 2>/dev/null; do sleep 10; done
$S sel_aligned .venv/bin/tokensafe eval --model aligned $SEL
$S align_pref_v1 .venv/bin/tokensafe align --config configs/align/preference.yaml --data_dir $D --threads 1 \
  --refusal_sft false --model aligned --pair_answers_model default --recovery_pairs true --recovery_n 60 \
  --pref_n_harmful 40 --pref_n_benign 20 --pref_n_borderline 30 --pref_n_twins 80 \
  --name aligned_pref_v1 --output_dir runs/align_pref_v1
$S sel_pref_v1 .venv/bin/tokensafe eval --model aligned_pref_v1 $SEL
