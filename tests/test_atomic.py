"""Atomic writes (tokensafe.atomic) and the test-only kill hook (tokensafe.faults)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tokensafe.atomic import atomic_dir, atomic_path, write_json, write_text, write_yaml
from tokensafe.faults import ENV


def test_write_replaces_the_file_and_leaves_no_temporary_behind(tmp_path):
    target = tmp_path / "deep" / "result.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2, "b": [1, 2]})
    assert json.loads(target.read_text()) == {"a": 2, "b": [1, 2]}
    write_yaml(tmp_path / "c.yaml", {"z": 1, "a": None})
    assert (tmp_path / "c.yaml").read_text() == "z: 1\na: null\n"  # keys keep their order
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["c.yaml", "deep", "result.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "result.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new cont")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.txt"]


def test_a_process_killed_mid_write_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "result.txt"
    write_text(target, "old")
    # The child writes part of the new content to the temporary file and is SIGKILLed before the rename.
    code = (
        "import os, signal, sys\n"
        "from tokensafe.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half of the new')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert target.read_text() == "old"


def test_kill_hook_fires_at_the_nth_hit_of_its_point_only():
    code = (
        "from tokensafe.faults import maybe_kill\n"
        "for i in range(5):\n"
        "    maybe_kill('other')\n"
        "    maybe_kill('point')\n"
        "    print(i, flush=True)\n"
    )
    env = {**os.environ, ENV: "point:3"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split() == ["0", "1"]
    unset = {k: v for k, v in os.environ.items() if k != ENV}
    proc = subprocess.run([sys.executable, "-c", code], env=unset, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["0", "1", "2", "3", "4"]


def _entry(path, text):
    path.mkdir(parents=True, exist_ok=True)
    (path / "weights").write_text(text)


def test_atomic_dir_replaces_the_whole_directory_and_leaves_no_staging_behind(tmp_path):
    target = tmp_path / "cache" / "entry"
    _entry(target, "old")
    (target / "stale").write_text("from the old entry")
    with atomic_dir(target) as staging:
        assert staging.parent == target.parent and staging.name.startswith(".entry.staging-")
        assert (target / "weights").read_text() == "old"  # not published before the block ends
        (staging / "weights").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["weights"]  # nothing of the old entry survives
    assert (target / "weights").read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["entry"]


def test_atomic_dir_keeps_the_old_directory_when_the_block_fails(tmp_path):
    target = tmp_path / "entry"
    _entry(target, "old")
    with pytest.raises(RuntimeError, match="save failed"):
        with atomic_dir(target) as staging:
            (staging / "weights").write_text("half")
            raise RuntimeError("save failed")
    assert (target / "weights").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def test_atomic_dir_keeps_a_copy_another_process_finished_first(tmp_path):
    target = tmp_path / "entry"

    def whole(path):
        return (path / "weights").is_file()

    with atomic_dir(target, keep_existing=whole) as staging:
        (staging / "weights").write_text("mine")
        _entry(target, "theirs")  # the other process publishes while this one is still writing
    assert (target / "weights").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]
    # A damaged entry (no weights) is replaced.
    (target / "weights").unlink()
    with atomic_dir(target, keep_existing=whole) as staging:
        (staging / "weights").write_text("mine")
    assert (target / "weights").read_text() == "mine"
