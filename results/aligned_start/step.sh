#!/usr/bin/env bash
# Run one measured command from /work/main, logging output to logs/<label>.log and wall time to runs.jsonl.
# usage: results/aligned_start/step.sh <label> <command...>
set -u
label=$1; shift
cd /work/main
log=results/aligned_start/logs/$label.log
start=$(date +%s)
echo "\$ $*" > "$log"
nice -n 5 "$@" >> "$log" 2>&1
rc=$?
end=$(date +%s)
python3 -c "import json,sys; print(json.dumps({'label': sys.argv[1], 'command': sys.argv[2], 'rc': int(sys.argv[3]), 'wall_s': int(sys.argv[4]), 'finished': sys.argv[5]}))" \
  "$label" "$*" "$rc" "$((end-start))" "$(date -u +%FT%TZ)" >> results/aligned_start/runs.jsonl
exit $rc
