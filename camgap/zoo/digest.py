"""A done run's ``final.pt``, checked: its size and sha256, recorded beside it when it is written
(``final.pt.sha256.json``), and ``check_final``, which `zoo build` (to train a corrupt one again)
and `zoo status` (to flag it) run for every done run.

A ``final.pt`` without a record (written before records existed, or a kill between the two
writes) is checked by reading it back; a writer then records its digest. Nothing here imports
torch unless a file has to be read back.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

__all__ = ["DIGEST_SUFFIX", "file_digest", "record_digest", "forget_digest", "save_final", "check_final"]

DIGEST_SUFFIX = ".sha256.json"
_CHUNK = 1 << 20


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def file_digest(path: str | Path) -> dict:
    """``{"size": bytes, "sha256": hex}`` of the file as it is on disk."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": h.hexdigest()}


def record_digest(path: str | Path) -> None:
    """Write ``<path>.sha256.json`` with the file's size and sha256 (atomically)."""
    from camgap.zoo.files import atomic_write_json

    path = Path(path)
    atomic_write_json({"file": path.name, **file_digest(path)}, _digest_path(path))


def forget_digest(path: str | Path) -> None:
    """Remove a file's record before the file is rewritten: a kill between the two writes then
    leaves no record (checked by reading) rather than another file's."""
    _digest_path(Path(path)).unlink(missing_ok=True)


def save_final(obj, path: str | Path) -> None:
    """``files.atomic_save`` of a run's ``final.pt``, its size and sha256 recorded beside it (what
    `zoo build` and `zoo status` check it against). The old record goes first: a kill between
    the writes leaves a file without a record, checked by reading it back."""
    from camgap.zoo.files import atomic_save

    forget_digest(path)
    atomic_save(obj, path)
    record_digest(path)


def _recorded(path: Path) -> dict | None:
    try:
        rec = json.loads(_digest_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(rec, dict) and isinstance(rec.get("size"), int) and isinstance(rec.get("sha256"), str)
    return rec if ok else None


def check_final(run_dir: str | Path, run_id: str, record: bool = False) -> str | None:
    """The problem with ``run_dir/final.pt`` of a done run, in one line naming it; None when it is
    sound: the size and sha256 recorded when it was written match, or (no record) it reads back
    as run ``run_id``'s result, after which ``record`` writes its record. A full or failing disk
    raises its OSError."""
    path = Path(run_dir) / "final.pt"
    if not path.is_file():
        return f"{path}: missing"
    rec = _recorded(path)
    if rec is not None:
        now = file_digest(path)
        if now["size"] != rec["size"]:
            return f"{path}: {now['size']} bytes, {rec['size']} when it was written (truncated or overwritten)"
        if now["sha256"] != rec["sha256"]:
            return f"{path}: its sha256 differs from the one recorded when it was written (corrupt)"
        return None
    from camgap.zoo.files import CheckpointUnreadableError, read_run_checkpoint

    try:
        ck = read_run_checkpoint(path)
    except CheckpointUnreadableError as exc:
        return str(exc)
    if ck.get("run_id") != run_id or "result" not in ck:
        return f"{path}: holds no result of run {run_id}"
    if record:
        record_digest(path)
    return None
