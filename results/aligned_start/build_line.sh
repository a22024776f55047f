#!/usr/bin/env bash
# Rebuild an on-policy round and every start it stands on, oldest first, skipping starts already in the model cache
# (a machine replacement empties it; the rounds exist only as this chain of configs, each naming its start as
# `model:`). Each step is `tokensafe align --config <config>`; a stopped build resumes at the first missing start.
#   bash results/aligned_start/build_line.sh configs/align/own_refusals_round9.yaml [data_dir]
# The line behind round nine is deep_gsm8k60 and nine preference rounds: about 5.5 hours on 2 idle cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
TARGET=${1:?usage: build_line.sh <configs/align/...yaml> [data_dir]}
DATA=${2:-../shared/data}
CACHE=${TOKENSAFE_CACHE_DIR:-$HOME/.cache/tokensafe}
# "<config> <name>" from the bundled model to TARGET, oldest first: follow `model:` to the config whose `name:` it is.
LINE=$(.venv/bin/python - "$TARGET" <<'PY'
import sys
from pathlib import Path

import yaml

configs = {p: yaml.safe_load(p.read_text()) for p in sorted(Path("configs/align").glob("*.yaml"))}
by_name = {c["name"]: p for p, c in configs.items()}
line, path = [], Path(sys.argv[1])
if path not in configs:
    raise SystemExit(f"{path}: not a config under configs/align")
while True:
    line.append(path)
    start = configs[path]["model"]
    if start == "default":
        break
    if start not in by_name:
        raise SystemExit(f"{path}: its start {start!r} is no config's name in configs/align")
    path = by_name[start]
print("\n".join(f"{p} {configs[p]['name']}" for p in reversed(line)))
PY
)
while read -r CONFIG NAME; do
  if [ -f "$CACHE/models/$NAME/config.json" ]; then
    echo "== $NAME: in the cache, skipped"
    continue
  fi
  echo "== $NAME: tokensafe align --config $CONFIG"
  .venv/bin/tokensafe align --config "$CONFIG" --data_dir "$DATA" --output_dir "runs/align_$NAME" < /dev/null
done <<< "$LINE"
