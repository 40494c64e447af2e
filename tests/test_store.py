"""The cached tensor store (camgap.data.store)."""

import dataclasses
import hashlib
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import torch

import camgap.data.dataset as dataset_mod
from camgap.data.dataset import BoxDataset, collate_boxes
from camgap.data.errors import DataError
from camgap.data.layouts import read_layout
from camgap.data.store import StoreError, TensorStore, records_fingerprint
from camgap.data.synthetic import write_synthetic

S = 40  # != 32: the store really resizes


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "d", seed=5, classes=3, train_per_class=5, test_per_class=1)


@pytest.fixture
def records(data_root):
    return read_layout(data_root, "csv", "train")[0]


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = dataset_mod.load_item

    def counting(record, *a, **kw):
        calls.append(record.path)
        return real(record, *a, **kw)

    monkeypatch.setattr(dataset_mod, "load_item", counting)
    return calls


def _forbid_decoding(monkeypatch):
    def boom(*a, **kw):
        raise AssertionError("decoded an image")

    monkeypatch.setattr(dataset_mod, "load_item", boom)
    monkeypatch.setattr(dataset_mod, "decode_rgb", boom)


def _digest(store):
    h = hashlib.sha256(np.ascontiguousarray(store.images.numpy()).tobytes())
    h.update(store.labels.numpy().tobytes())
    for b in store.boxes:
        h.update(b.numpy().tobytes())
    return h.hexdigest()


def test_round_trip_equals_boxdataset(records, tmp_path):
    store = TensorStore.build(records, tmp_path / "c", S, classes=["a", "b", "c"])
    ds = BoxDataset(records, S)
    assert len(store) == len(records) == 15
    assert store.images.shape == (15, 3, S, S) and store.images.dtype == torch.uint8
    assert store.labels.dtype == torch.int64
    assert store.image_ids == [r.image_id for r in records]
    assert store.record_index.tolist() == list(range(15))
    assert (store.input_size, store.resize, store.classes) == (S, "resize", ["a", "b", "c"])
    for i in range(len(ds)):
        img, label, boxes, box_labels = ds[i]
        assert torch.equal(store.images[i], img)
        assert int(store.labels[i]) == label == records[i].label
        assert store.boxes[i].dtype == torch.float32 and torch.equal(store.boxes[i], boxes)
        assert torch.equal(store.box_labels[i], box_labels)
        item = store[i]
        assert torch.equal(item[0], img) and item[1] == label and torch.equal(item[2], boxes)
    # boxes are in input pixels: 32 -> 40 scales by 1.25
    r0 = records[0]
    np.testing.assert_allclose(store.boxes[0].numpy(), np.array(r0.boxes, dtype=np.float32) * S / 32, rtol=1e-6)
    assert (tmp_path / "c" / "images.u8").stat().st_size == 15 * 3 * S * S
    assert not [p for p in os.listdir(tmp_path / "c") if ".tmp-" in p]


def test_resize_crop_mode(records, tmp_path):
    store = TensorStore.build(records[:3], tmp_path / "c", S, resize="resize_crop")
    ds = BoxDataset(records[:3], S, resize="resize_crop")
    for i in range(3):
        img, _, boxes, _ = ds[i]
        assert torch.equal(store.images[i], img) and torch.equal(store.boxes[i], boxes)


def test_reopen_and_cached_do_not_decode(records, tmp_path, monkeypatch):
    built = TensorStore.build(records, tmp_path / "c", S)
    digest = _digest(built)
    _forbid_decoding(monkeypatch)
    assert _digest(TensorStore.open(tmp_path / "c")) == digest
    again = TensorStore.cached(records, tmp_path / "c", S)
    assert _digest(again) == digest and again.fingerprint == built.fingerprint


def test_cached_rebuilds_when_fingerprint_changes(records, tmp_path, count_decodes):
    cache = tmp_path / "c"
    first = TensorStore.cached(records, cache, S)
    assert len(count_decodes) == 15
    TensorStore.cached(records, cache, S)
    assert len(count_decodes) == 15  # matched: no decode
    # a file's mtime changes -> rebuild
    st = os.stat(records[2].path)
    os.utime(records[2].path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = TensorStore.cached(records, cache, S)
    assert len(count_decodes) == 30 and second.fingerprint != first.fingerprint
    # other input size -> rebuild with the new shape
    third = TensorStore.cached(records, cache, 24)
    assert len(count_decodes) == 45 and third.images.shape == (15, 3, 24, 24)
    # other records -> rebuild; the old store object still reads its (replaced) file
    fourth = TensorStore.cached(records[:4], cache, 24)
    assert len(fourth) == 4 and torch.equal(fourth.images, third.images[:4])
    assert second.images.shape == (15, 3, S, S) and torch.equal(second.images[0], BoxDataset(records, S)[0][0])
    assert records_fingerprint(records, 24) != records_fingerprint(records, 24, "resize_crop")


def test_incomplete_or_corrupt_cache(records, tmp_path, count_decodes):
    cache = tmp_path / "c"
    with pytest.raises(FileNotFoundError):
        TensorStore.open(cache)
    TensorStore.build(records, cache, S)
    with open(cache / "images.u8", "r+b") as f:
        f.truncate(100)
    with pytest.raises(StoreError, match="bytes"):
        TensorStore.open(cache)
    store = TensorStore.cached(records, cache, S)  # repaired by a rebuild
    assert len(count_decodes) == 30 and torch.equal(store.images[-1], BoxDataset(records, S)[14][0])
    (cache / "meta.json").unlink()  # as if killed mid-rebuild
    with pytest.raises(FileNotFoundError):
        TensorStore.open(cache)
    assert len(TensorStore.cached(records, cache, S)) == 15


def test_bad_image_raises_or_is_skipped(records, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    recs = list(records[:4])
    recs[1] = type(recs[1])(bad, recs[1].label, recs[1].boxes, recs[1].box_labels, None, "bad")
    with pytest.raises(DataError, match="bad.png"):
        TensorStore.build(recs, tmp_path / "c", S)
    assert not (tmp_path / "c" / "meta.json").exists()
    assert not [p for p in os.listdir(tmp_path / "c") if ".tmp-" in p]
    with pytest.warns(UserWarning, match="skipped 1 of 4"):
        store = TensorStore.build(recs, tmp_path / "c", S, skip_bad=True)
    assert len(store) == 3 and store.record_index.tolist() == [0, 2, 3]
    assert store.image_ids == [recs[0].image_id, recs[2].image_id, recs[3].image_id]
    assert [s["index"] for s in store.skipped] == [1] and "bad.png" in store.skipped[0]["path"]
    with pytest.raises(ValueError, match="empty"):
        TensorStore.build([], tmp_path / "e", S)


def test_batches_cover_every_index_once(records, tmp_path):
    store = TensorStore.build(records, tmp_path / "c", S)
    ds = BoxDataset(records, S)
    ref = collate_boxes([ds[i] for i in range(len(ds))])
    # in order: the same as collate_boxes over the dataset
    got = list(store.batches(4))
    assert [b[0].shape[0] for b in got] == [4, 4, 4, 3]
    assert torch.equal(torch.cat([b[0] for b in got]), ref[0])
    assert torch.equal(torch.cat([b[1] for b in got]), ref[1])
    assert all(torch.equal(a, b) for a, b in zip([x for b in got for x in b[2]], ref[2]))
    assert all(torch.equal(a, b) for a, b in zip([x for b in got for x in b[3]], ref[3]))

    # shuffled: a permutation, seeded
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return list(store.batches(4, shuffle=True, generator=g))

    a, b = run(1), run(1)
    imgs = torch.cat([x[0] for x in a])
    order = [next(j for j in range(15) if torch.equal(store.images[j], im)) for im in imgs]
    assert sorted(order) == list(range(15)) and order != list(range(15))
    assert torch.equal(torch.cat([x[1] for x in a]), store.labels[order])
    assert all(torch.equal(x, store.boxes[j]) for x, j in zip([bx for x in a for bx in x[2]], order))
    assert torch.equal(imgs, torch.cat([x[0] for x in b]))
    # indices subset, drop_last
    sub = list(store.batches(2, indices=[7, 3, 11], drop_last=True))
    assert len(sub) == 1 and torch.equal(sub[0][0], store.images[[7, 3]])
    # batches are copies: writing to one leaves the store alone
    before = store.images[0].clone()
    got[0][0].zero_()
    got[0][2][0].zero_()
    assert torch.equal(store.images[0], before) and store.boxes[0].abs().sum() > 0


def test_to_device_is_an_in_memory_copy(records, tmp_path):
    store = TensorStore.build(records, tmp_path / "c", S)
    res = store.to_device("cpu")
    assert torch.equal(res.images, store.images) and torch.equal(res.labels, store.labels)
    res.images[0].zero_()
    assert not torch.equal(res.images[0], store.images[0])  # independent of the memmap
    g = torch.Generator().manual_seed(0)
    order = torch.cat([b[1] for b in res.batches(6, shuffle=True, generator=g)])
    assert sorted(order.tolist()) == sorted(store.labels.tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_batches_and_resident(records, tmp_path):
    store = TensorStore.build(records, tmp_path / "c", S)
    imgs = torch.cat([b[0] for b in store.batches(4, device="cuda")])
    assert imgs.is_cuda and torch.equal(imgs.cpu(), store.images)
    res = store.to_device("cuda")
    assert res.images.is_cuda and torch.equal(res.images.cpu(), store.images)
    b = next(res.batches(5, device="cuda", shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert b[0].is_cuda and b[1].is_cuda and b[0].shape == (5, 3, S, S)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_shared_between_processes(records, tmp_path):
    store = TensorStore.build(records, tmp_path / "c", S)
    digest = _digest(store)
    # pickling sends only the directory; the receiver reopens the memmap
    blob = pickle.dumps(store)
    assert len(blob) < 2000
    assert _digest(pickle.loads(blob)) == digest
    # another process opens the same files (fork: no second torch import)
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_digest_in_child, args=(str(tmp_path / "c"), child))
    proc.start()
    assert parent.poll(60)
    result = parent.recv()
    proc.join(30)
    assert proc.exitcode == 0
    assert result == digest


def _digest_in_child(cache_dir, conn):
    try:
        conn.send(_digest(TensorStore.open(cache_dir)))
    except BaseException as e:  # noqa: BLE001 - report instead of hanging the parent
        conn.send(repr(e))


def _cached_in_child(records, cache_dir, conn):
    try:
        store = TensorStore.cached(records, cache_dir, S)
        conn.send((_digest(store), os.stat(os.path.join(cache_dir, "images.u8")).st_ino))
    except BaseException as e:  # noqa: BLE001 - report instead of hanging the parent
        conn.send(repr(e))


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_concurrent_cached_builds_once(records, tmp_path):
    ctx = multiprocessing.get_context("fork")
    cache = str(tmp_path / "c")
    pipes, procs = [], []
    for _ in range(2):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_cached_in_child, args=(records, cache, child))
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    results = []
    for parent, proc in zip(pipes, procs):
        assert parent.poll(60)
        results.append(parent.recv())
        proc.join(30)
    assert all(isinstance(r, tuple) for r in results), results
    (d1, ino1), (d2, ino2) = results
    assert d1 == d2 == _digest(TensorStore.open(cache))
    assert ino1 == ino2  # the second process waited on the lock and reused the first build
    assert not [p for p in os.listdir(cache) if ".tmp-" in p]


def test_max_pixels_decides_what_a_skipping_store_holds(records, tmp_path, count_decodes):
    """A store that skipped files under one limit is rebuilt under another; one that skipped
    nothing is reused under any limit (the same images either way)."""
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (64, 64), (9, 9, 9)).save(big)
    records = [dataclasses.replace(records[0], path=big), *records[1:]]  # the others are 32 x 32
    cache = tmp_path / "c"
    with pytest.warns(UserWarning, match="skipped 1 of 15 images"):
        small = TensorStore.cached(records, cache, S, skip_bad=True, max_pixels=32 * 32)
    assert len(small) == len(records) - 1 and small.meta["max_pixels"] == 32 * 32
    assert [(s["path"], s["problem"]) for s in small.skipped] == [
        (
            str(big),
            f"{big}: image header declares 64x64 pixels (0.0 megapixels), over the limit of 0.001024 "
            "megapixels and 16384 px a side; raise --max-pixels to read it",
        )
    ]
    n = len(count_decodes)
    full = TensorStore.cached(records, cache, S, skip_bad=True)
    assert len(full) == len(records) and not full.skipped and len(count_decodes) == 2 * n
    again = TensorStore.cached(records, cache, S, skip_bad=True, max_pixels=10**9)  # skipped nothing: reused
    assert len(again) == len(records) and len(count_decodes) == 2 * n
