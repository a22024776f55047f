#!/usr/bin/env bash
# The shipped headline experiments, one run at a time in the order that answers most first, each run's tables
# committed as soon as it lands (the machine may be replaced between sessions; results/ survives in git, runs/ and
# the caches do not). Resumable: a finished run is never redone, so stopping this script (Ctrl-C, kill of its
# process group) and starting it again continues where it stopped.
#
#   mkdir -p logs && nohup setsid scripts/headline.sh > logs/headline.log 2>&1 &   # repository root, after setup.sh
#   scripts/headline.sh --list                                       # the queue, without running anything
#   scripts/headline.sh --pending                                    # the items a start would visit (finished skipped)
#
# The starting model (aligned_deep) is built first when the cache lacks it (a replaced machine: ~22-30 min,
# `tokensafe align --config configs/align/deep.yaml`). Its build is bit-reproducible on the same software; if the
# rebuilt fingerprint is not the one the committed rows name, the queue stops (every finished run would be redone
# on another start): set NEW_START=1 to accept that.
# Environment: DATA_DIR (default ../shared/data), NICE (default 5), COMMIT (default 1; 0 leaves git alone),
# NEW_START (default 0).
set -u
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
NICE=${NICE:-5}
COMMIT=${COMMIT:-1}
NEW_START=${NEW_START:-0}
START=aligned_deep
START_CONFIG=configs/align/deep.yaml
START_RESULTS=results/gsm8k_beavertails_p10/results.json  # the first table: its start is every table's start
# results/overview.md (every defence on every setting), regenerated with each committed run
OVERVIEW_SOURCES=(results/gsm8k_beavertails_p10 results/gsm8k_clean results/poison_sweep results/sst2_advbench_p10)

# experiment:run-pattern, in order: seed 0 of the GSM8K table; the second seed of SFT and of the PACT variant (the
# one defence that wins there on seed 0: one seed is not a finding); the two small tables (gsm8k_clean, the sweep);
# then the SST-2 table (22 runs; the rows that answer the PACT setting's question first: SFT, oracle, PACT, TOSS,
# the PACT ablation ladder); last the other second seeds. A finished run costs only its experiment's planning
# (seconds), so the queue lists every run (tests/experiment/test_experiment_config.py).
QUEUE=(
  gsm8k_beavertails_p10:"*/sft/seed0" gsm8k_beavertails_p10:"*/oracle/seed0" gsm8k_beavertails_p10:"*/toss_raw/seed0"
  gsm8k_beavertails_p10:"*/toss_pro/seed0" gsm8k_beavertails_p10:"*/pact/seed0"
  gsm8k_beavertails_p10:"*/pact_variant/seed0" gsm8k_beavertails_p10:"*/toss_pact/seed0" gsm8k_beavertails_p10:"*/toss/seed0"
  gsm8k_beavertails_p10:"*/sample_score/seed0" gsm8k_beavertails_p10:"*/kl/seed0"
  gsm8k_beavertails_p10:"*/toss_pact_variant/seed0" gsm8k_beavertails_p10:"*/csft/seed0"
  gsm8k_beavertails_p10:"*/safeinstr/seed0" gsm8k_beavertails_p10:"*/safelora/seed0"
  gsm8k_beavertails_p10:"*/asft/seed0" gsm8k_beavertails_p10:"*/sample_random/seed0"
  gsm8k_beavertails_p10:"*/toss_pact_kept/seed0"
  gsm8k_beavertails_p10:"*/sft/seed1" gsm8k_beavertails_p10:"*/pact_variant/seed1"
  gsm8k_clean:"*" poison_sweep:"*"
  sst2_advbench_p10:"*/sft/seed0" sst2_advbench_p10:"*/oracle/seed0" sst2_advbench_p10:"*/pact/seed0"
  sst2_advbench_p10:"*/toss/seed0" sst2_advbench_p10:"*/pact_kl/seed0" sst2_advbench_p10:"*/pact_tokens/seed0"
  sst2_advbench_p10:"*/pact_weights/seed0" sst2_advbench_p10:"*/pact_post/seed0"
  sst2_advbench_p10:"*/pact_lambda0.3/seed0" sst2_advbench_p10:"*/pact_lambda3/seed0"
  sst2_advbench_p10:"*/toss_pact/seed0" sst2_advbench_p10:"*/toss_raw/seed0" sst2_advbench_p10:"*/toss_pro/seed0"
  sst2_advbench_p10:"*/sample_score/seed0" sst2_advbench_p10:"*/sample_random/seed0" sst2_advbench_p10:"*/pact_variant/seed0"
  sst2_advbench_p10:"*/kl/seed0" sst2_advbench_p10:"*/csft/seed0" sst2_advbench_p10:"*/safelora/seed0"
  sst2_advbench_p10:"*/asft/seed0" sst2_advbench_p10:"*/safeinstr/seed0"
  gsm8k_beavertails_p10:"*/oracle/seed1" gsm8k_beavertails_p10:"*/toss/seed1"
  gsm8k_beavertails_p10:"*/pact/seed1" gsm8k_beavertails_p10:"*/toss_pact/seed1"
)

# "name:*" stands for every run of that experiment, one at a time (in its config's order, seed 0 before seed 1). One
# python process expands all of them (each start of python with torch costs seconds).
expand() {  # experiment names
  .venv/bin/python - "$@" <<'PY'
import sys

from tokensafe.config import load_config
from tokensafe.experiment.config import ExperimentConfig
from tokensafe.experiment.matrix import expand

for name in sys.argv[1:]:
    cells = [c for c in expand(load_config(ExperimentConfig, f"configs/experiment/{name}.yaml")) if not c.is_initial]
    for cell in sorted(cells, key=lambda c: c.seed):  # stable: the experiment's own order within each seed
        print(f"{name}:{cell.id}")
PY
}
expand_queue() {  # QUEUE with every "name:*" replaced by that experiment's runs
  local item run whole=() whole_runs=() expanded=()
  for item in "${QUEUE[@]}"; do
    [[ "${item#*:}" == "*" ]] && whole+=("${item%%:*}")
  done
  mapfile -t whole_runs < <(expand "${whole[@]}")
  for item in "${QUEUE[@]}"; do
    if [[ "${item#*:}" == "*" ]]; then
      for run in "${whole_runs[@]}"; do
        [[ "${run%%:*}" == "${item%%:*}" ]] && expanded+=("${run}")
      done
    else
      expanded+=("${item}")
    fi
  done
  QUEUE=("${expanded[@]}")
}

if [[ "${1:-}" == "--list" ]]; then
  expand_queue
  printf '%s\n' "${QUEUE[@]}"
  exit 0
fi

# The start: built when missing, then its fingerprint checked against the committed rows' (a wrong start would turn
# every finished row into a pending one).
start_fingerprint() {
  .venv/bin/python -c "from tokensafe.models import model_fingerprint; print(model_fingerprint('${START}'))" 2>/dev/null
}
recorded=$(.venv/bin/python -c "import json,sys; print(json.load(open(sys.argv[1]))['starting_model']['fingerprint'])" \
  "${START_RESULTS}" 2>/dev/null)
current=$(start_fingerprint)
if [[ -z "${current}" && "${1:-}" != "--pending" ]]; then
  echo "=== $(date -u +%FT%TZ) the starting model ${START} is not in the cache: building it (${START_CONFIG})"
  nice -n "${NICE}" .venv/bin/tokensafe align --config "${START_CONFIG}" --data_dir "${DATA_DIR}" || exit $?
  current=$(start_fingerprint)
fi
if [[ -n "${current}" && -n "${recorded}" && "${current}" != "${recorded}" && "${NEW_START}" != 1 ]]; then
  echo "=== ${START} is ${current}, but the committed rows were measured on ${recorded}: every finished run would be" \
    "redone. Stopping; set NEW_START=1 to run the tables on this start."
  exit 3
fi
[[ -n "${current}" ]] && echo "=== start ${START} ${current} (committed rows: ${recorded:-none})"
expand_queue  # after the start check: a wrong start stops the script before seconds of planning

# The runs still to do, by one planning pass per experiment (seconds each): a queue item none of whose runs is
# pending is skipped without starting its worker (a visit to a finished run costs ~15 s of model loading).
declare -A PENDING=() LISTED=()
for name in $(printf '%s\n' "${QUEUE[@]%%:*}" | sort -u); do
  if listing=$(.venv/bin/tokensafe experiment --config "configs/experiment/${name}.yaml" --data_dir "${DATA_DIR}" \
    --output_dir results --list_pending true 2>&1); then
    LISTED["${name}"]=1
    while read -r word run_id; do
      [[ "${word}" == pending ]] && PENDING["${name}:${run_id}"]=1
    done <<< "${listing}"
  else  # visit every run of it: the experiment itself will say what is wrong
    echo "=== listing the pending runs of ${name} failed; every run of it is visited: $(tail -n 3 <<< "${listing}")"
  fi
done
echo "=== $(date -u +%FT%TZ) ${#PENDING[@]} runs pending (finished runs are skipped)"

is_pending() {  # experiment, fnmatch pattern of run ids
  local key
  [[ -z "${LISTED[$1]:-}" ]] && return 0
  for key in "${!PENDING[@]}"; do
    # shellcheck disable=SC2053  # the pattern is a glob on purpose
    [[ "${key%%:*}" == "$1" && "${key#*:}" == $2 ]] && return 0
  done
  return 1
}

for item in "${QUEUE[@]}"; do
  name=${item%%:*}
  pattern=${item#*:}
  if ! is_pending "${name}" "${pattern}" && ! is_pending "${name}" initial; then
    continue
  fi
  if [[ "${1:-}" == "--pending" ]]; then
    echo "${item}"
    continue
  fi
  echo "=== $(date -u +%FT%TZ) ${name} ${pattern}"
  nice -n "${NICE}" .venv/bin/tokensafe experiment --config "configs/experiment/${name}.yaml" \
    --data_dir "${DATA_DIR}" --output_dir results --only "initial,${pattern}"
  rc=$?
  echo "=== $(date -u +%FT%TZ) ${name} ${pattern} rc=${rc}"
  # Only when a row or an illustration changed: a visit to a finished run rewrites the tables with a new "updated"
  # time and nothing else, which is not worth a commit.
  if [[ "${COMMIT}" == 1 ]] && [[ -n "$(git status --porcelain -- "results/${name}/runs.jsonl" "results/${name}/artifacts.json")" ]]; then
    .venv/bin/python -m tokensafe.experiment.overview "${OVERVIEW_SOURCES[@]}" --out results/overview.md
    git add -- "results/${name}" results/overview.md \
      && git commit -q -m "Headline ${name}: ${pattern} (scripts/headline.sh)" -- "results/${name}" results/overview.md
  fi
  if [[ ${rc} -ge 128 ]]; then  # killed by a signal: stop the queue too
    exit "${rc}"
  fi
done
