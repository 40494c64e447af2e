"""BoxDataset / collate_boxes / normalize: images and boxes at the input size, numerically."""

import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torch.testing import assert_close
from torch.utils.data import DataLoader

from camgap.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BoxDataset,
    DataError,
    Record,
    collate_boxes,
    decode_rgb,
    normalize,
    read_layout,
)
from tests.helpers.data import make_imagenet, save_image

BW, BH = 40, 32  # the dataset tests' image size


def _image(tmp_path, name="im.png"):
    y, x = np.mgrid[0:BH, 0:BW]
    a = np.stack([6 * x, 7 * y, (x * y) % 256], -1).astype(np.uint8)
    return save_image(tmp_path / name, array=a)


def _rec(path, boxes=(), box_labels=None, ann_size=None, label=3, image_id="im"):
    if box_labels is None:
        box_labels = tuple(range(len(boxes)))
    return Record(path, label, tuple(tuple(map(float, b)) for b in boxes), tuple(box_labels), ann_size, image_id)


def _boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def test_resize_whole_image(tmp_path):
    p = _image(tmp_path)
    ds = BoxDataset([_rec(p, [(4, 4, 36, 28), (0, 0, 4, 4)])], input_size=16)
    img, label, boxes, box_labels = ds[0]
    assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 16, 16)
    assert label == 3
    # x scales by 16/40 = 0.4, y by 16/32 = 0.5
    assert_close(boxes, _boxes((1.6, 2.0, 14.4, 14.0), (0.0, 0.0, 1.6, 2.0)))
    assert boxes.dtype == torch.float32 and box_labels.dtype == torch.int64
    assert box_labels.tolist() == [0, 1]
    assert torch.equal(img, TF.resize(decode_rgb(p), [16, 16], antialias=True))
    assert ds.image_ids == ["im"]


def test_resize_crop_moves_clamps_and_drops_boxes(tmp_path):
    p = _image(tmp_path)
    recs = [_rec(p, [(4, 4, 36, 28), (0, 0, 4, 4), (20, 0, 24, 8)])]
    img, _, boxes, box_labels = BoxDataset(recs, input_size=16, resize="resize_crop")[0]
    # shorter side 32 -> int(16/0.875) = 18, so 40x32 -> 22x18 (x*0.55, y*0.5625);
    # centre crop 16: top = round(1) = 1, left = round(3) = 3
    assert tuple(img.shape) == (3, 16, 16)
    assert_close(boxes, _boxes((0.0, 1.25, 16.0, 14.75), (8.0, 0.0, 10.2, 3.5)))
    assert box_labels.tolist() == [0, 2]  # (0,0,4,4) was cropped away entirely
    expected = TF.center_crop(TF.resize(decode_rgb(p), 18, antialias=True), [16, 16])
    assert torch.equal(img, expected)


def test_ann_size_rescale_and_clamp(tmp_path):
    p = _image(tmp_path)
    # annotation frame 80x64 = twice the image: (8,8,72,56) -> (4,4,36,28) -> x0.4/y0.5
    # the second box overflows the frame and is clamped to the image first
    recs = [_rec(p, [(8, 8, 72, 56), (-10, -6, 100, 70)], ann_size=(80, 64))]
    _, _, boxes, _ = BoxDataset(recs, input_size=16)[0]
    assert_close(boxes, _boxes((1.6, 2.0, 14.4, 14.0), (0.0, 0.0, 16.0, 16.0)))
    # same frame as the image: no rescale
    recs = [_rec(p, [(4, 4, 36, 28)], ann_size=(BW, BH))]
    _, _, boxes, _ = BoxDataset(recs, input_size=16)[0]
    assert_close(boxes, _boxes((1.6, 2.0, 14.4, 14.0)))


def test_degenerate_boxes_dropped_with_warning(tmp_path):
    p = _image(tmp_path, "degenerate_case.png")
    recs = [_rec(p, [(10, 10, 10, 20), (50, 0, 60, 10), (4, 4, 36, 28), (30, 9, 20, 12)])]
    with pytest.warns(UserWarning, match=r"degenerate_case\.png: dropped 3 degenerate box"):
        _, _, boxes, box_labels = BoxDataset(recs, input_size=16)[0]
    assert_close(boxes, _boxes((1.6, 2.0, 14.4, 14.0)))
    assert box_labels.tolist() == [2]


def test_no_boxes(tmp_path):
    p = _image(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img, _, boxes, box_labels = BoxDataset([_rec(p)], input_size=8, resize="resize_crop")[0]
    assert tuple(img.shape) == (3, 8, 8)
    assert tuple(boxes.shape) == (0, 4) and tuple(box_labels.shape) == (0,)


def test_through_read_layout_imagenet(tmp_path):
    root = make_imagenet(tmp_path)
    records, classes = read_layout(root)
    ds = BoxDataset(records, input_size=20)
    i = ds.image_ids.index("n02_2")
    img, label, boxes, _ = ds[i]
    assert classes[label] == "n02"
    # XML frame 40x32 on a decoded 20x16 image -> (2,3,10,12); resize to 20x20: y * 1.25
    assert_close(boxes, _boxes((2.0, 3.75, 10.0, 15.0)))
    assert np.abs(img[:, 10, 10].numpy().astype(int) - [30, 200, 30]).max() <= 6


def test_grayscale_and_cmyk_through_dataset(tmp_path):
    g = save_image(tmp_path / "g.JPEG", size=(BW, BH), color=(90, 90, 90), mode="L")
    c = save_image(tmp_path / "c.JPEG", size=(BW, BH), color=(200, 40, 90), mode="CMYK")
    ds = BoxDataset([_rec(g, image_id="g"), _rec(c, image_id="c")], input_size=12)
    for i in range(2):
        img = ds[i][0]
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 12, 12)
    assert np.abs(ds[1][0][:, 6, 6].numpy().astype(int) - [200, 40, 90]).max() <= 12


def test_bad_image_raises_or_is_skipped(tmp_path):
    good = _image(tmp_path)
    bad = tmp_path / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    recs = [_rec(good, [(4, 4, 36, 28)], image_id="good"), _rec(bad, image_id="broken")]
    with pytest.raises(DataError) as ei:
        BoxDataset(recs, input_size=8)[1]
    assert ei.value.path == str(bad)

    ds = BoxDataset(recs, input_size=8, skip_bad=True)
    with pytest.warns(UserWarning, match=r"skipping .*broken\.JPEG"):
        batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_boxes))
    assert len(batches) == 1
    images, labels, boxes, box_labels = batches[0]
    assert tuple(images.shape) == (1, 3, 8, 8) and labels.tolist() == [3]
    assert len(boxes) == 1 and tuple(boxes[0].shape) == (1, 4)
    assert [p for p, _ in ds.skipped] == [str(bad)]
    assert len(ds) - len(labels) == 1  # the count that holds with any num_workers

    with pytest.warns(UserWarning):
        empty = collate_boxes([ds[1]])
    assert tuple(empty[0].shape) == (0, 3, 0, 0) and empty[1].numel() == 0
    assert empty[2] == [] and empty[3] == []


def test_collate_boxes(tmp_path):
    p = _image(tmp_path)
    recs = [
        _rec(p, [(4, 4, 36, 28)], label=1, image_id="a"),
        _rec(p, [(0, 0, 8, 8), (4, 4, 36, 28)], label=2, image_id="b"),
    ]
    images, labels, boxes, box_labels = collate_boxes([*BoxDataset(recs, input_size=8)])
    assert images.dtype == torch.uint8 and tuple(images.shape) == (2, 3, 8, 8)
    assert labels.dtype == torch.int64 and labels.tolist() == [1, 2]
    assert [tuple(b.shape) for b in boxes] == [(1, 4), (2, 4)]
    assert [bl.tolist() for bl in box_labels] == [[0], [0, 1]]


def test_invalid_resize_mode(tmp_path):
    with pytest.raises(ValueError, match="unknown resize mode"):
        BoxDataset([], resize="crop")


def test_normalize():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).reshape(3, 1, 1).expand(3, 2, 2)
    y = normalize(x)
    assert y.dtype == torch.float32 and tuple(y.shape) == (3, 2, 2)
    m, s = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (torch.tensor([0.0, 1.0, 128 / 255]) - m) / s
    assert_close(y[:, 1, 1], expected)
    b = normalize(x.unsqueeze(0).repeat(2, 1, 1, 1), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert tuple(b.shape) == (2, 3, 2, 2)
    assert_close(b[1, :, 0, 0], torch.tensor([-1.0, 1.0, 128 / 255 * 2 - 1]))
    with pytest.raises(ValueError):
        normalize(torch.zeros(2, 4, 4, dtype=torch.uint8))
