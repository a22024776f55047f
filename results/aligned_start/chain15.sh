#!/usr/bin/env bash
# Twelfth session (issue 16). Is the erosion under clean GSM8K fine-tuning the cost of learning a new answer format?
# aligned_deep (aligned with SST-2 self-answers) keeps its JBB ASR at 6% through clean SST-2 fine-tuning
# (results/sst2_advbench_p10, oracle row) but goes to 44% through clean GSM8K fine-tuning. configs/align/deep_gsm8k.yaml
# = deep.yaml + 200 GSM8K train rows with their dataset answers (packed training). Then the issue's two checks, the
# start on the selection and evaluation suites, and a check on a task neither start was aligned on (270 Alpaca rows,
# clean) from both starts: the GSM8K rows can only count as a general lever if Alpaca does not erode it more.
# Runs beside the headline queue (both niced; wall times are therefore not budget measurements).
source "$(dirname "$0")/checks.sh"
$S align_deep_gsm8k .venv/bin/tokensafe align --config configs/align/deep_gsm8k.yaml --data_dir $D \
  --output_dir runs/align_deep_gsm8k
$S ft_clean_deep_gsm8k .venv/bin/tokensafe train $FT --model aligned_deep_gsm8k --harmful_share 0 \
  --output_dir runs/ft_clean_deep_gsm8k
jbb ft_clean_deep_gsm8k runs/ft_clean_deep_gsm8k/final
$S ft_pois_deep_gsm8k .venv/bin/tokensafe train $FT --model aligned_deep_gsm8k --output_dir runs/ft_pois_deep_gsm8k
jbb ft_pois_deep_gsm8k runs/ft_pois_deep_gsm8k/final
$S sel_deep_gsm8k .venv/bin/tokensafe eval --model aligned_deep_gsm8k --name aligned_deep_gsm8k $SEL \
  --output_dir runs/eval_align
$S final_eval_deep_gsm8k .venv/bin/tokensafe eval --model aligned_deep_gsm8k --name aligned_deep_gsm8k \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir $D --output_dir runs/eval_align_final
for start in aligned_deep aligned_deep_gsm8k; do
  $S "ft_alpaca_${start}" .venv/bin/tokensafe train $FT --model "$start" --task alpaca --harmful_share 0 \
    --output_dir "runs/ft_alpaca_${start}"
  jbb "ft_alpaca_${start}" "runs/ft_alpaca_${start}/final"
done
