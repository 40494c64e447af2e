"""`zoo status` on a model set at rest reads no checkpoint: a done run's final.pt is hashed again
only when its mtime or inode is not the one recorded with its sha256 (or with --verify), and a
touched, replaced or truncated file is still found (``camgap.zoo.digest``)."""

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

import camgap.zoo.digest as digest
import camgap.zoo.files as files
from camgap.zoo.cli import main
from camgap.zoo.config import RunConfig, RunResult
from camgap.zoo.digest import check_final, save_final
from camgap.zoo.grid import RunSpec
from camgap.zoo.registry import ZooDB
from camgap.zoo.status import format_status, status

N = 5
CONFIG = {"arch": "small_resnet", "batch_size": 32, "optimizer": "sgd", "weight_decay": 0.0, "trained": True}
HOUR_NS = 3600 * 10**9


def _result(rid: str) -> RunResult:
    return RunResult(
        rid, "done", epochs=3, stop_reason="C1", train_acc=0.9, train_loss=0.1, test_acc=0.6, test_loss=1.0, gap=30.0
    )


def _final(zoo: Path, rid: str) -> Path:
    return zoo / "runs" / rid / "final.pt"


def _record(zoo: Path, rid: str) -> Path:
    return zoo / "runs" / rid / "final.pt.sha256.json"


@pytest.fixture
def zoo(tmp_path):
    """N done runs whose final.pt were written an hour ago and checked by a build since (a set at
    rest: every record newer than its file)."""
    rids = [f"r{i}" for i in range(N)]
    with ZooDB.in_dir(tmp_path) as reg:
        reg.add_runs([RunSpec(rid, RunConfig.from_dict(CONFIG | {"lr": i + 1}), 0, 1) for i, rid in enumerate(rids)])
        for i, rid in enumerate(rids):
            reg.mark_done(rid, _result(rid))
            final = _final(tmp_path, rid)
            final.parent.mkdir(parents=True)
            save_final({"run_id": rid, "result": _result(rid).to_dict(), "w": torch.full((256,), float(i))}, final)
            old = final.stat().st_mtime_ns - HOUR_NS
            os.utime(final, ns=(old, old))
    tally = {}
    assert all(check_final(_final(tmp_path, rid).parent, rid, record=True, tally=tally) is None for rid in rids)
    assert tally == {"hashed": N}  # the build's check: mtimes differ from the records, written again
    return tmp_path


@pytest.fixture
def reads(monkeypatch):
    """Counts of the calls that read a checkpoint's bytes: hashing, and reading it back."""
    counts = {"hashed": 0, "read_back": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(digest, "file_digest", counting("hashed", digest.file_digest))
    monkeypatch.setattr(files, "read_run_checkpoint", counting("read_back", files.read_run_checkpoint))
    return counts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _set_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(path.stat().st_atime_ns, mtime_ns))


def test_records_hold_size_sha256_mtime_and_inode(zoo):
    final = _final(zoo, "r0")
    st = final.stat()
    rec = json.loads(_record(zoo, "r0").read_text())
    want = {
        "file": "final.pt",
        "size": st.st_size,
        "sha256": _sha256(final),
        "mtime_ns": st.st_mtime_ns,
        "inode": st.st_ino,
    }
    assert rec == want


def test_status_of_an_unchanged_set_reads_no_checkpoint(zoo, reads):
    records = {rid: _record(zoo, rid).read_bytes() for rid in (f"r{i}" for i in range(N))}
    info = status(zoo)
    assert info["integrity_problems"] == [] and info["counts"]["done"] == N
    assert reads == {"hashed": 0, "read_back": 0}
    assert info["final_checks"] == {"by_stat": N, "hashed": 0, "read_back": 0}
    assert "final.pt of" not in format_status(info)
    # --verify hashes every one; status writes no record either way
    info = status(zoo, verify=True)
    assert info["integrity_problems"] == [] and reads == {"hashed": N, "read_back": 0}
    assert info["final_checks"] == {"by_stat": 0, "hashed": N, "read_back": 0}
    assert {rid: _record(zoo, rid).read_bytes() for rid in records} == records


def test_a_touched_file_is_hashed_until_a_build_records_its_mtime(zoo, reads):
    final = _final(zoo, "r1")
    _set_mtime(final, final.stat().st_mtime_ns + HOUR_NS)
    info = status(zoo)
    assert info["integrity_problems"] == [] and reads["hashed"] == 1
    assert info["final_checks"] == {"by_stat": N - 1, "hashed": 1, "read_back": 0}
    assert (
        f"final.pt of {N} done runs: {N - 1} not read (size, mtime, inode as recorded), 1 hashed "
        "(mtime or inode changed, or --verify), 0 read back" in format_status(info)
    )
    assert status(zoo)["final_checks"]["hashed"] == 1  # status is read-only: hashed again
    assert check_final(final.parent, "r1", record=True) is None  # what `zoo build` runs
    assert json.loads(_record(zoo, "r1").read_text())["mtime_ns"] == final.stat().st_mtime_ns
    reads["hashed"] = 0
    assert status(zoo)["final_checks"]["hashed"] == 0 and reads["hashed"] == 0


def test_a_file_replaced_with_its_size_and_mtime_is_found_by_its_inode(zoo, reads):
    final = _final(zoo, "r2")
    st = final.stat()
    other = final.with_name("other.pt")
    data = bytearray(final.read_bytes())
    data[len(data) // 2] ^= 0xFF
    other.write_bytes(bytes(data))
    os.replace(other, final)
    _set_mtime(final, st.st_mtime_ns)
    assert final.stat().st_ino != st.st_ino and final.stat().st_size == st.st_size
    info = status(zoo)
    assert info["integrity_problems"] == [
        f"run r2: done, but {final}: its sha256 differs from the one recorded when it was written (corrupt); "
        "`camgap zoo build --verify` trains it again"
    ]
    assert reads["hashed"] == 1


def test_a_truncated_file_is_found_without_reading_it(zoo, reads):
    final = _final(zoo, "r3")
    st = final.stat()
    with open(final, "r+b") as f:
        f.truncate(st.st_size // 2)
    _set_mtime(final, st.st_mtime_ns)
    info = status(zoo)
    assert info["integrity_problems"] == [
        f"run r3: done, but {final}: {st.st_size // 2} bytes, {st.st_size} when it was written "
        "(truncated or overwritten); `camgap zoo build --verify` trains it again"
    ]
    assert reads == {"hashed": 0, "read_back": 0}


def test_verify_finds_a_file_edited_in_place_with_its_mtime_set_back(zoo, reads, capsys):
    final = _final(zoo, "r4")
    st = final.stat()
    with open(final, "r+b") as f:
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    _set_mtime(final, st.st_mtime_ns)
    assert _sha256(final) != json.loads(_record(zoo, "r4").read_text())["sha256"]
    # the stat check cannot see it (the limit --verify is for)
    assert main(["status", "--zoo", str(zoo)]) == 0 and reads["hashed"] == 0
    capsys.readouterr()
    assert main(["status", "--zoo", str(zoo), "--verify"]) == 1
    out = capsys.readouterr().out
    assert f"run r4: done, but {final}: its sha256 differs from the one recorded when it was written (corrupt)" in out
    assert "INTEGRITY PROBLEMS (1):" in out and reads["hashed"] == N


def test_a_record_without_mtime_and_inode_is_hashed_then_completed(zoo, reads):
    """A record written before mtime and inode were recorded (size and sha256 alone)."""
    rec_path, final = _record(zoo, "r0"), _final(zoo, "r0")
    old = {k: v for k, v in json.loads(rec_path.read_text()).items() if k in ("file", "size", "sha256")}
    rec_path.write_text(json.dumps(old))
    info = status(zoo)
    assert info["integrity_problems"] == [] and info["final_checks"]["hashed"] == 1
    assert check_final(final.parent, "r0", record=True) is None
    st = final.stat()
    assert json.loads(rec_path.read_text()) == old | {"mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    assert status(zoo)["final_checks"] == {"by_stat": N, "hashed": 0, "read_back": 0}


def test_a_record_not_newer_than_its_file_is_hashed(zoo, reads):
    """A record stamped in the clock tick of the file's last write ("racy"): a write later in that
    tick would leave the mtime unchanged, so the stat cannot vouch for the file."""
    final, rec_path = _final(zoo, "r1"), _record(zoo, "r1")
    _set_mtime(rec_path, final.stat().st_mtime_ns)
    assert status(zoo)["final_checks"]["hashed"] == 1 and reads["hashed"] == 1


def test_a_file_without_record_is_read_back(zoo, reads):
    _record(zoo, "r2").unlink()
    info = status(zoo)
    assert info["integrity_problems"] == [] and reads == {"hashed": 0, "read_back": 1}
    assert info["final_checks"] == {"by_stat": N - 1, "hashed": 0, "read_back": 1}


def test_a_build_says_how_many_checkpoints_it_had_to_read(zoo, reads):
    from camgap.zoo.recovery import retrain_unsound_finals

    final = _final(zoo, "r1")
    _set_mtime(final, final.stat().st_mtime_ns + HOUR_NS)
    said = []
    with ZooDB.in_dir(zoo) as reg:
        retrain_unsound_finals(reg, zoo, said.append)
        assert said == [
            f"{zoo}: checked the done runs' final.pt: 1 hashed (new or changed on disk since recorded), "
            f"{N - 1} by size, mtime and inode"
        ]
        said.clear()
        retrain_unsound_finals(reg, zoo, said.append)  # recorded by the first: nothing read, nothing said
    assert said == [] and reads["hashed"] == 1


def test_build_verify_trains_again_a_file_damaged_with_its_size_mtime_and_inode_kept(zoo, reads):
    from camgap.zoo.recovery import retrain_unsound_finals

    final = _final(zoo, "r2")
    st = final.stat()
    with open(final, "r+b") as f:  # bit rot: one byte, in place, the mtime set back
        f.seek(st.st_size // 2)
        byte = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    _set_mtime(final, st.st_mtime_ns)
    said = []
    with ZooDB.in_dir(zoo) as reg:
        retrain_unsound_finals(reg, zoo, said.append)  # a plain build trusts size, mtime and inode
        assert not [s for s in said if "WARNING" in s] and reg.todo(2) == []
        retrain_unsound_finals(reg, zoo, said.append, verify=True)
        assert [r.run_id for r in reg.todo(2)] == ["r2"]
    assert any(s.startswith("WARNING r2: ") and "sha256 differs" in s for s in said)
