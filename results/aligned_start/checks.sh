# Sourced by the issue-16 chains (chain15.sh, chain17.sh): the step runner, the data directory, the selection suites,
# the fine-tuning check's config, and jbb <label> <model dir> (JBB ASR, the check, and harmful_val, the
# selection suite, of a fine-tuned model).
cd /work/main
S=results/aligned_start/step.sh; D=/work/shared/data
mkdir -p results/aligned_start/logs
SEL="--suites harmful_val,borderline_val,twins_val,sensitive_val --subset first --judge keyword --data_dir $D"
FT="--config configs/train/sft_gsm8k_poisoned.yaml --data_dir $D"
jbb() {  # label, model dir
  $S "final_$1" .venv/bin/tokensafe eval --model "$2" --name "$1" --suites jbb_harmful --judge keyword --data_dir $D \
    --output_dir runs/eval_align_final
  $S "sel_$1" .venv/bin/tokensafe eval --model "$2" --name "$1" --suites harmful_val --subset first --judge keyword \
    --data_dir $D --output_dir runs/eval_align
}
