"""`tokensafe align`'s records read back for a results file: what made the start, without paths or wall times."""

from __future__ import annotations

import json

import yaml

from tokensafe.align_record import ALIGN_CONFIG_FILE, ALIGN_SUMMARY_FILE, read_align_record
from tokensafe.digests import model_dir_key


def _write(directory, summary, settings):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ALIGN_SUMMARY_FILE).write_text(json.dumps(summary))
    (directory / ALIGN_CONFIG_FILE).write_text(yaml.safe_dump(settings))
    (directory / "config.json").write_text("{}")


def test_record_names_data_and_base_and_keeps_only_what_trained(tmp_path):
    summary = {
        "name": "aligned_deep",
        "base_fingerprint": "7e9bbb8ebb5cf3b0",
        "data": {"samples": 876, "fingerprint": "5be8ff4552bcef30"},
        "seconds_total": 1298.2,
    }
    settings = {"name": "aligned_deep", "learning_rate": 3e-5, "use_lora": False, "output_dir": "runs/x", "threads": 2}
    _write(tmp_path / "m", summary, settings)
    record = read_align_record(tmp_path / "m")
    assert record == {
        "name": "aligned_deep",
        "base_fingerprint": "7e9bbb8ebb5cf3b0",
        "data_fingerprint": "5be8ff4552bcef30",
        "samples": 876,
        "settings": {"name": "aligned_deep", "learning_rate": 3e-5, "use_lora": False},
    }


def test_missing_or_broken_records_read_as_absent(tmp_path):
    assert read_align_record(tmp_path) is None
    _write(tmp_path / "m", {"name": "x"}, {"name": "x"})
    (tmp_path / "m" / ALIGN_SUMMARY_FILE).write_text("{not json")
    assert read_align_record(tmp_path / "m") is None


def test_two_runs_to_the_same_weights_share_a_key(tmp_path):
    # Wall time, name and path differ between the runs; the model files do not.
    _write(tmp_path / "a", {"name": "a", "seconds_total": 1.0}, {"name": "a", "output_dir": "runs/a"})
    _write(tmp_path / "b", {"name": "b", "seconds_total": 2.0}, {"name": "b", "output_dir": "runs/b"})
    assert model_dir_key(tmp_path / "a") == model_dir_key(tmp_path / "b")
