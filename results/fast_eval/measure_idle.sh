#!/usr/bin/env bash
# Issue 15 measurements on 2 idle cores (run when nothing else runs): the 200-prompt benchmark (today's path vs the
# engine, bundled model) and the 4-suite evaluation wall time on the aligned model (fresh output dir: no cache).
cd /work/main
set -x
/usr/bin/time -v .venv/bin/python benchmarks/bench_generate.py --data_dir ../shared/data --n 200 --widths 16,32,64 \
  --threads 2 --json results/fast_eval/bench200_idle.json 2>&1 | tail -40
rm -rf runs/eval_fast_idle
/usr/bin/time -f "wall %e s, max RSS %M KiB" .venv/bin/tokensafe eval --model aligned \
  --suites jbb_harmful,xstest_safe,jbb_benign,sst2:200 --judge keyword --data_dir ../shared/data \
  --output_dir runs/eval_fast_idle --threads 2 --progress false
