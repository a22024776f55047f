"""Run every bad input of tests/bad_input_cases.py as a real `tokensafe` subprocess and write the table
results/trustworthy_runs/bad_inputs.md: command, exit code, the message, and whether it failed before a model loaded.

    .venv/bin/python scripts/bad_inputs_table.py [--jobs 2] [--out results/trustworthy_runs/bad_inputs.md]

"Before model load" is measured, not assumed: each subprocess runs with a ``sitecustomize`` that, at exit, records
which ``transformers.models.<arch>.modeling_<arch>`` modules were imported. transformers imports an architecture's
modeling module only to build a model of it, so a module beyond those that importing the commands pulls in (the
baseline, measured the same way) means a model was built. The in-process test (tests/test_bad_inputs.py) checks the
same property by making every model loader fail.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bad_input_cases import CASES, BadInput, make_fixtures  # noqa: E402

HOOK = """
import atexit, json, os, sys

def _record():
    names = sorted(m for m in list(sys.modules) if m.startswith("transformers.models.") and ".modeling_" in m)
    with open(os.environ["TOKENSAFE_MODULES_OUT"], "w") as handle:
        json.dump(names, handle)

atexit.register(_record)
"""
IMPORT_COMMANDS = (
    "import tokensafe.train, tokensafe.align, tokensafe.eval.run, tokensafe.toss.commands, tokensafe.pact.commands, "
    "tokensafe.baselines.safelora, tokensafe.prepare, tokensafe.doctor"
)
PLACEHOLDERS = (
    "model",
    "tmp",
    "empty",
    "bad_rows",
    "malformed_yaml",
    "unknown_key_yaml",
    "bad_type_yaml",
    "list_yaml",
)


def modeling_modules(argv: list[str], env: dict[str, str], out: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {**env, "TOKENSAFE_MODULES_OUT": str(out)}
    result = subprocess.run(["nice", "-n", "10", *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    modules = set(json.loads(out.read_text())) if out.is_file() else set()
    return result, modules


def shown(case: BadInput) -> str:
    """The command line as the table shows it: fixture paths as <placeholders>."""
    parts = []
    for part in case.argv:
        for name in PLACEHOLDERS:
            part = part.replace("{" + name + "}", f"<{name}>")
        parts.append(part)
    return "tokensafe " + " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "results" / "trustworthy_runs" / "bad_inputs.md"))
    parser.add_argument("--only", default="", help="run only the cases whose id contains this text")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only in c.id]

    from tokensafe.testing import real_tokenizer, save_tiny_model

    tokensafe_bin = str(Path(sys.executable).parent / "tokensafe")
    with tempfile.TemporaryDirectory(prefix="bad-inputs-") as scratch:
        root = Path(scratch)
        fixtures = make_fixtures(root / "cases", save_tiny_model(root / "tiny-model", real_tokenizer()))
        (root / "hook").mkdir()
        (root / "hook" / "sitecustomize.py").write_text(HOOK, encoding="utf-8")
        env = {
            **os.environ,
            "PYTHONPATH": str(root / "hook"),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENSAFE_CACHE_DIR": str(root / "cache"),
            "TOKENSAFE_DATA_DIR": os.environ.get("TOKENSAFE_DATA_DIR", str(ROOT.parent / "shared" / "data")),
        }
        _, baseline = modeling_modules([sys.executable, "-c", IMPORT_COMMANDS], env, root / "baseline.json")

        def run(index_case: tuple[int, BadInput]) -> dict:
            index, case = index_case
            start = time.time()
            result, modules = modeling_modules(
                [tokensafe_bin, *case.args(fixtures)], env, root / f"modules-{index}.json"
            )
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            message = next((line for line in reversed(lines) if ": error: " in line), lines[-1] if lines else "")
            return {
                "case": case,
                "code": result.returncode,
                "message": message.replace(str(root / "cases"), "<tmp>").replace(fixtures["model"], "<model>"),
                "one_line": len(lines) == 1,
                "traceback": "Traceback" in result.stderr,
                "loaded": sorted(modules - baseline),
                "seconds": time.time() - start,
            }

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(run, enumerate(cases)))

    import re

    lines = [
        "# Bad inputs: one line, exit code 2, before any model loads",
        "",
        f"Generated by `scripts/bad_inputs_table.py` ({len(rows)} cases from `tests/bad_input_cases.py`, each run as "
        "a real `tokensafe` subprocess, offline, with an empty cache; `<tmp>`, `<model>` (a tiny random Llama "
        'directory) and the other `<...>` are files the script writes). "Before model load" is measured: no '
        "model architecture's modeling module was imported by the process. The same cases run in-process as tests "
        "(`tests/test_bad_inputs.py`), which also make every model loader fail.",
        "",
        "| # | command | exit | stderr (the error line) | before model load | as expected |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        case: BadInput = row["case"]
        ok = (
            row["code"] == 2
            and not row["traceback"]
            and (row["one_line"] or not case.before_model_load)
            and re.search(case.expect, row["message"]) is not None
            and (not row["loaded"]) == case.before_model_load
        )
        message = row["message"].replace("|", "\\|")
        before = "yes" if not row["loaded"] else f"no ({', '.join(m.split('.')[-1] for m in row['loaded'])})"
        lines.append(f"| {i} | `{shown(case)}` | {row['code']} | {message} | {before} | {'yes' if ok else 'NO'} |")
    failures = sum(line.endswith("| NO |") for line in lines)
    lines += ["", f"{len(rows) - failures} of {len(rows)} cases as expected.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}: {len(rows) - failures}/{len(rows)} as expected")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
