"""A done run's ``final.pt``, checked: its size and sha256, recorded beside it when it is written
(``final.pt.sha256.json``), and ``check_final``, which `zoo build` (to train a corrupt one again)
and `zoo status` (to flag it) run for every done run.

The record also holds the file's ``mtime_ns`` and ``inode`` as they were when it was hashed, so
that a check reads no byte of a file whose size, mtime and inode are still the recorded ones:
at the paper's scale (2000 checkpoints of ~45 MB) hashing them all would read 90 GB on every
`zoo status`. A file replaced (new inode), touched or rewritten (new mtime) or cut short (new
size) is hashed again as before; one damaged in place with its size, mtime and inode unchanged
(bit rot, an edit with its mtime set back) is found only by ``verify`` (`zoo status --verify`,
`zoo build --verify`), which hashes every file.

A ``final.pt`` without a record (written before records existed, or a kill between the two
writes) is checked by reading it back; a writer then records its digest. Nothing here imports
torch unless a file has to be read back.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = [
    "DIGEST_SUFFIX",
    "CHECK_KINDS",
    "file_digest",
    "record_digest",
    "forget_digest",
    "save_final",
    "check_final",
]

DIGEST_SUFFIX = ".sha256.json"
_CHUNK = 1 << 20
_STAT_KEYS = ("mtime_ns", "inode")
#: How ``check_final`` checked a file (the keys of its ``tally``): ``by_stat``, not read (size,
#: mtime and inode as recorded, or a size that differs); ``hashed``, its sha256 computed;
#: ``read_back``, no record, read back as a checkpoint.
CHECK_KINDS = ("by_stat", "hashed", "read_back")


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def _stat_key(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ino


def file_digest(path: str | Path) -> dict:
    """``{"size": bytes, "sha256": hex, "mtime_ns", "inode"}`` of the file as it is on disk; the
    mtime and inode are those of the file read (fstat), and left out when the file changed while
    it was read (a check then hashes it again rather than trust them)."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        before = os.fstat(f.fileno())
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
        after = os.fstat(f.fileno())
    digest = {"size": size, "sha256": h.hexdigest()}
    if _stat_key(before) == _stat_key(after) and after.st_size == size:
        digest |= {"mtime_ns": after.st_mtime_ns, "inode": after.st_ino}
    return digest


def _write_record(path: Path, digest: dict) -> None:
    from camgap.zoo.files import atomic_write_json

    atomic_write_json({"file": path.name, **digest}, _digest_path(path))


def record_digest(path: str | Path) -> None:
    """Write ``<path>.sha256.json`` with the file's size, sha256, mtime and inode (atomically)."""
    path = Path(path)
    _write_record(path, file_digest(path))


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


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _recorded(path: Path) -> dict | None:
    """The record, with ``written_ns``: the record file's own mtime (see ``_unchanged``)."""
    try:
        with open(_digest_path(path), "rb") as f:
            written_ns = os.fstat(f.fileno()).st_mtime_ns
            rec = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(rec, dict) and _is_int(rec.get("size")) and isinstance(rec.get("sha256"), str)
    return rec | {"written_ns": written_ns} if ok else None


def _unchanged(rec: dict, st: os.stat_result) -> bool:
    """Whether the file's mtime and inode are the recorded ones, and that says it is unchanged.
    It does not when the file's recorded mtime is not older than the record (both stamped by the
    same file system's clock): a write in that same clock tick would leave the mtime as it was
    (git's "racy" entries), so such a file is hashed until a later check records it again."""
    if not all(_is_int(rec.get(k)) for k in _STAT_KEYS):
        return False  # a record written before mtime and inode were recorded
    same = (rec["mtime_ns"], rec["inode"]) == (st.st_mtime_ns, st.st_ino)
    return same and rec["mtime_ns"] < rec["written_ns"]


def _size_problem(path: Path, size: int, rec: dict) -> str:
    return f"{path}: {size} bytes, {rec['size']} when it was written (truncated or overwritten)"


def _against_record(path: Path, rec: dict, record: bool, verify: bool) -> tuple[str, str | None]:
    """(how it was checked, the problem or None) of a file with a record. ``record`` writes the
    record again with the file's new mtime and inode when it was hashed and matched."""
    st = path.stat()
    if st.st_size != rec["size"]:
        return "by_stat", _size_problem(path, st.st_size, rec)
    if not verify and _unchanged(rec, st):
        return "by_stat", None
    now = file_digest(path)
    if now["size"] != rec["size"]:
        return "hashed", _size_problem(path, now["size"], rec)
    if now["sha256"] != rec["sha256"]:
        return "hashed", f"{path}: its sha256 differs from the one recorded when it was written (corrupt)"
    if record and not _unchanged(rec, st):
        _write_record(path, now)
    return "hashed", None


def _read_back(path: Path, run_id: str, record: bool) -> str | None:
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


def check_final(
    run_dir: str | Path, run_id: str, record: bool = False, verify: bool = False, tally: dict | None = None
) -> str | None:
    """The problem with ``run_dir/final.pt`` of a done run, in one line naming it; None when it is
    sound: its size matches the record and its sha256 does too (computed only when its mtime or
    inode is not the recorded one, or with ``verify``), or (no record) it reads back as run
    ``run_id``'s result. ``record`` writes the record of a sound file that had none, or whose
    mtime or inode changed. ``tally`` counts the files by how they were checked (``CHECK_KINDS``).
    A full or failing disk raises its OSError."""
    path = Path(run_dir) / "final.pt"
    if not path.is_file():
        return f"{path}: missing"
    rec = _recorded(path)
    if rec is None:
        how, problem = "read_back", _read_back(path, run_id, record)
    else:
        how, problem = _against_record(path, rec, record, verify)
    if tally is not None:
        tally[how] = tally.get(how, 0) + 1
    return problem
