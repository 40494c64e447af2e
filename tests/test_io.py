"""camgap.io: atomic writes and advisory file locks."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from camgap.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    file_lock,
    remove_stale_temp_files,
    replacing,
    temp_path,
)

ROOT = Path(__file__).resolve().parents[1]


def test_temp_path_is_hidden_beside_the_target_and_names_the_writer(tmp_path):
    assert temp_path(tmp_path / "final.pt") == tmp_path / f".final.pt.tmp-{os.getpid()}"


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda f: f.write(b"new"))
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_text_and_json_writes(tmp_path):
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    atomic_write_json({"b": 1, "a": [1.5]}, tmp_path / "j.json", sort_keys=True)
    assert (tmp_path / "j.json").read_text(encoding="utf-8") == '{"a": [1.5], "b": 1}\n'
    assert json.loads((tmp_path / "j.json").read_text(encoding="utf-8")) == {"a": [1.5], "b": 1}


def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def half(f):
        f.write(b"half of the new")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(path, half)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_an_oserror_of_the_write_names_the_target(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as err:
        atomic_write(tmp_path / "x.json", full, "w")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "x.json")
    assert list(tmp_path.iterdir()) == []


def test_replacing_moves_every_file_in_order_only_when_the_block_succeeds(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    with replacing(a, b) as (ta, tb):
        ta.write_text("1")
        tb.write_text("2")
        assert not a.exists() and not b.exists()
    assert (a.read_text(), b.read_text()) == ("1", "2")
    with pytest.raises(ValueError), replacing(a, b) as (ta, tb):
        ta.write_text("one")
        tb.write_text("two")
        raise ValueError
    assert (a.read_text(), b.read_text()) == ("1", "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


def _try_lock(path: Path, shared: bool) -> str:
    """Whether another process gets the lock at once: 'held' or 'busy'."""
    code = (
        "import sys; from camgap.io import file_lock\n"
        f"with file_lock(sys.argv[1], shared={shared}, wait=False) as held: print('held' if held else 'busy')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


def test_a_lock_excludes_a_second_process_until_it_is_released(tmp_path):
    path = tmp_path / ".lock"
    with file_lock(path) as held:
        assert held
        assert _try_lock(path, shared=False) == "busy"
        assert _try_lock(path, shared=True) == "busy"
    assert _try_lock(path, shared=False) == "held"


def test_shared_locks_exclude_only_an_exclusive_one(tmp_path):
    path = tmp_path / ".lock"
    with file_lock(path, shared=True) as held:
        assert held
        assert _try_lock(path, shared=True) == "held"
        assert _try_lock(path, shared=False) == "busy"


def test_a_read_only_probe_of_a_missing_lock_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError), file_lock(tmp_path / "none", create=False):
        pass
    assert not (tmp_path / "none").exists()


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.tmp-{dead_pid}"
    stale_store = tmp_path / f".images.u8.tmp-{dead_pid}-0a1b2c3d"
    mine = temp_path(tmp_path / "final.pt")
    other = tmp_path / "last.pt.tmp-1"  # not hidden: not an atomic write's name
    for p in (stale, stale_store, mine, other):
        p.write_bytes(b"x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted([stale, stale_store])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])
    assert remove_stale_temp_files(tmp_path / "missing") == []
