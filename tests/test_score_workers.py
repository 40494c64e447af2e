"""`score --workers N`: images decoded in worker processes give the numbers of `--workers 0`
exactly, the bad-file rules hold there (one line naming the file; --skip-bad skips and counts),
and the per-image table is written to disk as batches finish (CSV, or Parquet)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from camgap import machine, progress
from camgap.cli import main
from camgap.data import BoxDataset, read_layout
from camgap.data.errors import DataError
from camgap.errors import InputError
from camgap.machine import cpu_count
from camgap.measures import inputs
from camgap.measures import score as score_mod
from camgap.measures.score import ScoreOptions, score_model
from camgap.models import create_model
from tests.helpers.data import write_csv

SIZE, N_CLASSES, N_IMAGES, BATCH = 32, 3, 12, 4
BAD, DEGENERATE = 5, 9  # the index of a corrupt file (in the second batch) and of a box outside its image


def _write_data(root):
    """12 noise images (JPEG and PNG, several sizes) in a csv layout; one box per image, one
    of them wholly outside its image (a warning naming the file when decoded)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_IMAGES):
        w, h = int(rng.integers(30, 60)), int(rng.integers(30, 60))
        name = f"images/{i:02d}.{'jpg' if i % 2 else 'png'}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        box = [w + 5, h + 5, w + 9, h + 9] if i == DEGENERATE else [2, 3, w // 2 + 2, h // 2 + 3]
        rows.append([name, f"c{i % N_CLASSES}", *box])
    write_csv(root / "train.csv", rows)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_data(tmp_path_factory.mktemp("workers") / "d")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("small_resnet", N_CLASSES, width=4).eval()


def _dataset(root, skip_bad=False):
    records, _ = read_layout(root, "csv", "train")
    return BoxDataset(records, input_size=SIZE, skip_bad=skip_bad)


def _score(model, dataset, workers, **kw):
    """score_model with `workers` worker processes, and the warnings it gave, in order."""
    options = ScoreOptions(thresholds=(0.1, 0.5), batch_size=BATCH, num_workers=workers, device="cpu", **kw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = score_model(model, dataset, options)
    return result, [str(w.message) for w in caught]


def test_workers_give_the_numbers_and_warnings_of_one_process(data, model):
    base, said = _score(model, _dataset(data), 0)
    for workers in (1, 2):
        got, got_said = _score(model, _dataset(data), workers)
        pd.testing.assert_frame_equal(got.per_image, base.per_image, check_exact=True)
        assert torch.equal(got.logits, base.logits) and torch.equal(got.labels, base.labels)
        assert got.pxap() == base.pxap() and got.n_skipped == base.n_skipped == 0
        assert got_said == said
    assert len(said) == 1 and f"{DEGENERATE:02d}.jpg: dropped 1 degenerate box" in said[0]
    assert list(base.per_image.image_id) == _dataset(data).image_ids  # every image, in order


def _corrupt(tmp_path):
    root = _write_data(tmp_path / "d")
    bad = root / "images" / f"{BAD:02d}.jpg"
    bad.write_bytes(b"\xff\xd8\xff this is not a JPEG")
    return root, bad


def test_a_bad_file_in_a_worker_is_the_one_line_error_of_one_process(tmp_path, model):
    root, bad = _corrupt(tmp_path)
    errors = []
    for workers in (0, 2):
        with pytest.raises(DataError) as caught:
            _score(model, _dataset(root), workers, per_image_out=tmp_path / f"w{workers}.csv")
        errors.append(str(caught.value))
        assert not (tmp_path / f"w{workers}.csv").exists()  # no table under its name: it is not whole
    assert errors == [f"{bad}: corrupt or unsupported image (not a format PIL recognises)"] * 2
    # the batch before the bad file's was scored, and its rows kept in the .partial table
    partial = [pd.read_csv(tmp_path / f"w{w}.csv.partial", dtype={"image_id": str}) for w in (0, 2)]
    pd.testing.assert_frame_equal(partial[0], partial[1])
    assert list(partial[0].image_id) == _dataset(root).image_ids[:BATCH]


def test_skip_bad_in_workers_skips_and_counts(tmp_path, model):
    root, bad = _corrupt(tmp_path)
    base, said = _score(model, _dataset(root, skip_bad=True), 0)
    got, got_said = _score(model, _dataset(root, skip_bad=True), 2)
    pd.testing.assert_frame_equal(got.per_image, base.per_image, check_exact=True)
    assert got.n_skipped == base.n_skipped == 1 and got.n_images == N_IMAGES - 1
    assert got_said == said and any(s.startswith(f"skipping {bad}: corrupt") for s in said)


def test_cli_workers_bad_file_is_one_line_exit_2(tmp_path, model, capsys):
    root, bad = _corrupt(tmp_path)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    args = ["score", "--checkpoint", tmp_path / "m.pt", "--arch", "small_resnet", "--width", "4", "--data", root]
    args = [str(a) for a in (*args, "--layout", "csv", "--input-size", SIZE, "--device", "cpu", "--workers", "2")]
    capsys.readouterr()
    assert main([*args, "--batch-size", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"camgap: error: {bad}: corrupt or unsupported image (not a format PIL recognises)"
    assert "Traceback" not in err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--skip-bad", "--per-image", str(tmp_path / "t.csv"), "--json"]) == 0
    assert '"n_skipped": 1' in capsys.readouterr().out and len(pd.read_csv(tmp_path / "t.csv")) == N_IMAGES - 1


def test_the_streamed_csv_is_the_whole_tables_csv(data, model, tmp_path):
    out = tmp_path / "sub" / "per_image.csv"
    result, _ = _score(model, _dataset(data), 2, per_image_out=out)
    result.per_image.to_csv(tmp_path / "whole.csv", index=False)
    assert out.read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not out.with_name("per_image.csv.partial").exists()


def test_the_streamed_parquet_reads_back_as_the_table(data, model, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "per_image.parquet"
    result, _ = _score(model, _dataset(data), 0, per_image_out=out)
    pd.testing.assert_frame_equal(pd.read_parquet(out), result.per_image, check_exact=True, check_dtype=False)
    # correct: a nullable boolean (NA for a held-out image without a known label), in memory and on disk
    assert list(pd.read_parquet(out).dtypes.astype(str)[1:4]) == ["int64", "int64", "boolean"]


def test_a_folder_as_the_table_is_refused_before_anything_is_read(tmp_path):
    with pytest.raises(InputError, match=f"per_image_out {tmp_path}: is a folder"):
        ScoreOptions(per_image_out=tmp_path)


def test_without_logits_the_result_holds_the_same_table(data, model):
    base, _ = _score(model, _dataset(data), 0)
    got, _ = _score(model, _dataset(data), 0, keep_logits=False)
    assert got.logits is None and torch.equal(got.labels, base.labels)
    pd.testing.assert_frame_equal(got.per_image, base.per_image, check_exact=True)


def test_progress_lines_say_images_per_second(data, model, monkeypatch, caplog):
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    with caplog.at_level(logging.INFO, logger="camgap.progress"):
        _score(model, _dataset(data), 0, progress=True)
    last = [r.getMessage() for r in caplog.records if r.name == "camgap.progress"][-1]
    assert last.startswith(f"score: {N_IMAGES}/{N_IMAGES} img (100%)") and last.endswith("img/s")


def test_more_workers_than_cores_is_refused_before_any_process_starts(monkeypatch):
    monkeypatch.setattr(machine, "cpu_count", lambda: 2)
    assert ScoreOptions(num_workers=2).num_workers == 2
    with pytest.raises(InputError) as caught:
        ScoreOptions(num_workers=1_000_000)
    assert str(caught.value) == "num_workers: 1000000 processes is more than one per CPU (2 CPUs this process may use)"
    with pytest.raises(InputError, match="num_workers must be an integer >= 0, got -1"):
        ScoreOptions(num_workers=-1)


def test_the_model_gets_the_cores_the_workers_leave_and_torch_its_threads_back(data, model, monkeypatch):
    monkeypatch.setattr(machine, "cpu_count", lambda: 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        seen, score_batch = [], score_mod._score_batch
        monkeypatch.setattr(
            score_mod, "_score_batch", lambda *a: seen.append(torch.get_num_threads()) or score_batch(*a)
        )
        got, _ = _score(model, _dataset(data), 2)
        assert set(seen) == {1} and (got.num_workers, got.model_threads) == (2, 1)
        assert torch.get_num_threads() == 3
        base, _ = _score(model, _dataset(data), 0)  # no workers: torch's threads, untouched
        assert (base.num_workers, base.model_threads) == (0, 3)
        # another thread count may change float rounding in the model (oneDNN blocks its work by
        # thread), so the floats agree to rounding; on one thread both passes are the same pass
        pd.testing.assert_frame_equal(got.per_image, base.per_image, check_exact=False, rtol=1e-5)
        torch.set_num_threads(1)
        one, _ = _score(model, _dataset(data), 0)
        pd.testing.assert_frame_equal(got.per_image, one.per_image, check_exact=True)
    finally:
        torch.set_num_threads(threads)


def test_a_batch_s_boxes_cross_as_three_tensors_and_come_back_per_image():
    boxes = [torch.tensor([[1.0, 2, 3, 4], [0, 0, 5, 5]]), torch.empty(0, 4), torch.tensor([[2.0, 2, 6, 7]])]
    labels = [torch.tensor([0, 1]), torch.empty(0, dtype=torch.int64), torch.tensor([2])]
    packed = inputs._Boxes.pack(boxes, labels)
    assert packed.boxes.shape == (3, 4) and packed.counts.tolist() == [2, 0, 1]
    got_boxes, got_labels = packed.unpack()
    assert all(torch.equal(a, b) for a, b in zip(got_boxes, boxes)) and len(got_boxes) == 3
    assert all(torch.equal(a, b) for a, b in zip(got_labels, labels))
    assert inputs._Boxes.pack([], []).unpack() == ([], [])


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "must be 0 (this process) or more, got -1"),
        ("1.5", "not a whole number of processes: '1.5'"),
        ("many", "not a whole number of processes: 'many'"),
        ("1000000", "1000000 processes is more than one per CPU"),  # it forked until memory ran out
    ],
)
@pytest.mark.parametrize("command", ["score", "demo"])
def test_a_worker_count_out_of_bounds_is_refused_before_anything_starts(tmp_path, capsys, command, value, problem):
    args = ["--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path)] if command == "score" else []
    with pytest.raises(SystemExit) as exc:
        main([command, *args, "--workers", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"camgap {command}: error: argument --workers: {problem}" + (
        f" ({cpu_count()} CPUs this process may use)" if value == "1000000" else ""
    )


def test_no_more_workers_start_than_there_are_batches(data, model, monkeypatch):
    monkeypatch.setattr(machine, "cpu_count", lambda: 8)
    got, _ = _score(model, _dataset(data), 8)  # 12 images in batches of 4: 3 batches, 3 workers
    assert got.num_workers == 3 and got.n_images == N_IMAGES


def test_each_batch_of_the_csv_is_on_disk_before_the_next(tmp_path):
    """A process killed outright (kill -9) runs no cleanup: the rows of every batch written so far
    must already be in the .partial file, whole."""
    from camgap.measures.tablefile import TableFile

    frames = [pd.DataFrame({"image_id": [f"{b}{i}" for i in range(3)], "iou@0.1": [0.5, 0.25, 0.125]}) for b in "ab"]
    table = TableFile(tmp_path / "t.csv")
    with table:
        for k, frame in enumerate(frames, 1):
            table.write(frame)
            on_disk = pd.read_csv(table.partial)  # read while the file is still open
            pd.testing.assert_frame_equal(on_disk, pd.concat(frames[:k], ignore_index=True))
    assert (tmp_path / "t.csv").read_bytes() == pd.concat(frames).to_csv(index=False).encode()
