"""score_model against independent oracles: pytorch-grad-cam's GradCAM for the normalised
upsampled CAM, numpy for the thresholded region, the box raster (pixel-centre rule), the
enclosing rectangle and the IoU."""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from camgap.data import BoxDataset, read_layout
from camgap.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from camgap.data.store import TensorStore
from camgap.data.synthetic import render_sample, write_synthetic
from camgap.measures.score import score_model
from camgap.models import create_model

pgc = pytest.importorskip("pytorch_grad_cam")

SIZE = 32
# pytorch-grad-cam resizes with cv2 and normalises with a 1e-7 epsilon; camgap with torch's
# bilinear interpolate: the two normalised maps agree to ~1e-6, well inside 1e-4 (the
# agreement tests/test_cam.py asserts). A pixel whose oracle value lies within AMBIGUOUS of
# the threshold may therefore fall on either side in camgap; for such pixels the oracle
# accepts both sides (it enumerates the assignments, a count-level tolerance) and every
# other pixel must agree exactly.
AMBIGUOUS = 1e-4
TOL = 1e-6



# --- oracles (numpy + pytorch-grad-cam; no camgap code) -------------------------------------


def oracle_images(paths) -> torch.Tensor:
    """PIL-decoded RGB images, normalised with the ImageNet mean/std in numpy."""
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in paths])
    x = (x / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32).copy())


def oracle_cams(model, x: torch.Tensor, layer) -> np.ndarray:
    """pytorch-grad-cam GradCAM of the predicted class (targets=None): [N,H,W] in [0,1]."""
    model.eval()
    with pgc.GradCAM(model=model, target_layers=[layer]) as cam:
        out = cam(input_tensor=x, targets=None)
    for p in model.parameters():  # pytorch-grad-cam calls loss.backward()
        p.grad = None
    return out


def raster(boxes, size: int = SIZE) -> np.ndarray:
    """Union of boxes: pixel (y,x) inside when x+0.5 in [xmin,xmax] and y+0.5 in [ymin,ymax]."""
    c = np.arange(size) + 0.5
    m = np.zeros((size, size), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        m |= ((c >= y0) & (c <= y1))[:, None] & ((c >= x0) & (c <= x1))[None, :]
    return m


def enclosing(region: np.ndarray) -> np.ndarray:
    out = np.zeros_like(region)
    if region.any():
        ys, xs = np.nonzero(region)
        out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return out


def np_iou(a: np.ndarray, g: np.ndarray) -> float:
    if not g.any():
        return math.nan
    return (a & g).sum() / (a | g).sum()


def oracle_values(cam: np.ndarray, ref: np.ndarray, rho: float, kind: str) -> list[float]:
    """Every IoU (kind 'iou') or IoU-B ('iou_b') the region {cam >= rho} can have when the
    pixels within AMBIGUOUS of rho go either way; a single value when there are none."""
    amb = np.abs(cam - rho) < AMBIGUOUS
    sure = (cam >= rho) & ~amb
    where = np.argwhere(amb)
    assert len(where) <= 10, f"{len(where)} pixels within {AMBIGUOUS} of the threshold"
    values = []
    for bits in itertools.product((False, True), repeat=len(where)):
        region = sure.copy()
        for (y, x), on in zip(where, bits):
            region[y, x] = on
        values.append(np_iou(enclosing(region) if kind == "iou_b" else region, ref))
    return values


def assert_matches(got: float, values: list[float], what: str) -> None:
    if math.isnan(values[0]):
        assert math.isnan(got), f"{what}: expected NaN, got {got}"
        return
    assert min(abs(got - v) for v in values) <= TOL, f"{what}: {got} not in {values}"


def check_against_oracle(result, cams: np.ndarray, refs: list[np.ndarray], thresholds) -> int:
    """Assert every per-image IoU / IoU-B; returns how many pixels were ambiguous."""
    n_amb = 0
    for t in thresholds:
        for i, (cam, ref) in enumerate(zip(cams, refs)):
            row = result.per_image.iloc[i]
            assert_matches(row[f"iou@{t:g}"], oracle_values(cam, ref, t, "iou"), f"iou image {i} rho {t}")
            assert_matches(row[f"iou_b@{t:g}"], oracle_values(cam, ref, t, "iou_b"), f"iou_b image {i} rho {t}")
            n_amb += int((np.abs(cam - t) < AMBIGUOUS).sum())
            if not (np.abs(cam - t) < AMBIGUOUS).any():
                assert row[f"cam_area@{t:g}"] == pytest.approx((cam >= t).mean(), abs=1e-9)
    return n_amb


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("synth"), seed=3, classes=3, train_per_class=3,
                           test_per_class=1, size=SIZE)
    records, classes = read_layout(root, "csv", "train")
    assert len(records) == 9 and len(classes) == 3
    return root, records, classes


def csv_boxes(root, split="train") -> dict[str, list[tuple[float, ...]]]:
    """Boxes per image read straight from the manifest (independent of the loaders)."""
    df = pd.read_csv(root / f"{split}.csv")
    out: dict[str, list] = {}
    for r in df.itertuples():
        stem = r.path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        out.setdefault(stem, [])
        if not pd.isna(r.xmin):
            out[stem].append((r.xmin, r.ymin, r.xmax, r.ymax))
    return out


@pytest.fixture(scope="module")
def trained(synth):
    """SmallResNet (width 8) trained a few steps on the 9 images so its CAMs have structure."""
    _, records, _ = synth
    torch.manual_seed(0)
    x = oracle_images([r.path for r in records])
    y = torch.tensor([r.label for r in records])
    model = create_model("small_resnet", num_classes=3, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def oracle(synth, trained):
    root, records, _ = synth
    x = oracle_images([r.path for r in records])
    cams = oracle_cams(trained, x, trained.layer4)
    boxes = csv_boxes(root)
    refs = [raster(boxes[r.image_id]) for r in records]
    return x, cams, refs


@pytest.fixture(scope="module")
def base_result(synth, trained):
    _, records, _ = synth
    return score_model(trained, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.3, 0.5), batch_size=4,
                       keep_overlays=5)


# --- tests ----------------------------------------------------------------------------------


def test_per_image_iou_matches_pytorch_grad_cam_and_numpy(base_result, oracle):
    _, cams, refs = oracle
    # the CAMs are non-trivial: most thresholded regions are neither empty nor the whole image
    areas = [(c >= 0.1).mean() for c in cams]
    assert sum(0 < a < 1 for a in areas) >= 6
    assert len({round(v, 6) for v in base_result.per_image["iou@0.1"]}) >= 5
    assert all(r.any() for r in refs)
    n_amb = check_against_oracle(base_result, cams, refs, (0.1, 0.3, 0.5))
    assert n_amb <= 3  # the tolerance is an exception, not the rule
    # the model means are the plain means of the per-image values (no image lacks a box)
    for t in (0.1, 0.3, 0.5):
        assert base_result.iou(t) == pytest.approx(base_result.per_image[f"iou@{t:g}"].mean(), abs=1e-12)
        assert base_result.iou_b(t) == pytest.approx(base_result.per_image[f"iou_b@{t:g}"].mean(), abs=1e-12)
    assert base_result.iou() == base_result.iou(0.1)
    assert base_result.n_no_reference == 0 and base_result.n_images == 9 and base_result.n_skipped == 0


def test_predictions_labels_and_logits_are_the_forward_pass(base_result, synth, trained, oracle):
    _, records, _ = synth
    x, _, _ = oracle
    with torch.no_grad():
        expected = trained(x)
    torch.testing.assert_close(base_result.logits, expected, atol=1e-5, rtol=1e-5)
    assert base_result.labels.tolist() == [r.label for r in records]
    df = base_result.per_image
    assert df["image_id"].tolist() == [r.image_id for r in records]
    assert df["label"].tolist() == [r.label for r in records]
    assert df["pred"].tolist() == expected.argmax(1).tolist()
    assert df["correct"].tolist() == (expected.argmax(1) == torch.tensor(df["label"].tolist())).tolist()
    assert base_result.train_acc == pytest.approx(df["correct"].mean())


def test_overlays_keep_the_first_k_images(base_result, oracle):
    _, cams, refs = oracle
    ov = base_result.overlays
    assert [o["image_id"] for o in ov] == base_result.per_image["image_id"].tolist()[:5]  # spans 2 batches
    for i, o in enumerate(ov):
        assert o["image"].dtype == torch.uint8 and tuple(o["image"].shape) == (3, SIZE, SIZE)
        np.testing.assert_allclose(o["cam"].numpy(), cams[i], atol=1e-4)
        np.testing.assert_array_equal(o["reference"].numpy(), refs[i])
        assert o["iou"] == base_result.per_image["iou@0.1"].iloc[i]


def test_several_thresholds_equal_separate_calls(base_result, synth, trained):
    _, records, _ = synth
    data = BoxDataset(records, input_size=SIZE)
    for t in (0.1, 0.3, 0.5):
        single = score_model(trained, data, thresholds=(t,), batch_size=4)
        for kind in ("iou", "iou_b", "cam_area"):
            col = f"{kind}@{t:g}"
            np.testing.assert_array_equal(single.per_image[col].to_numpy(), base_result.per_image[col].to_numpy())
        assert single.iou() == base_result.iou(t)
        assert single.iou_b() == base_result.iou_b(t)
    s = base_result.summary()
    assert s["threshold"] == 0.1 and set(s["by_threshold"]) == {"0.1", "0.3", "0.5"}
    assert s["by_threshold"]["0.5"] == {"iou": base_result.iou(0.5), "iou_b": base_result.iou_b(0.5)}


def test_tensor_store_gives_the_same_result_as_box_dataset(base_result, synth, trained, tmp_path):
    _, records, _ = synth
    store = TensorStore.build(records, tmp_path / "cache", SIZE)
    res = score_model(trained, store, thresholds=(0.1, 0.3, 0.5), batch_size=4)
    pd.testing.assert_frame_equal(res.per_image, base_result.per_image)
    torch.testing.assert_close(res.logits, base_result.logits, atol=0, rtol=0)
    assert torch.equal(res.labels, base_result.labels)


def _count_forwards(model):
    calls = {"n_calls": 0, "n_images": 0}

    def hook(module, inputs, output):
        calls["n_calls"] += 1
        calls["n_images"] += inputs[0].shape[0]

    return calls, model.register_forward_hook(hook)


@pytest.mark.parametrize("layer", [None, "layer3"])  # closed form at layer4, autograd at layer3
def test_one_forward_pass_per_image(synth, trained, layer):
    _, records, _ = synth
    calls, handle = _count_forwards(trained)
    try:
        res = score_model(trained, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.5), batch_size=4,
                          target_layer=layer)
    finally:
        handle.remove()
    assert calls == {"n_calls": 3, "n_images": 9}
    assert res.n_images == 9
    assert all(p.grad is None for p in trained.parameters())


def test_layer3_matches_pytorch_grad_cam(synth, trained, oracle):
    _, records, _ = synth
    x, _, refs = oracle
    cams = oracle_cams(trained, x, trained.layer3)
    res = score_model(trained, BoxDataset(records, input_size=SIZE), thresholds=(0.1,), target_layer="layer3")
    check_against_oracle(res, cams, refs, (0.1,))


def test_masks_aligned_by_id(synth, trained, oracle):
    _, records, _ = synth
    _, cams, _ = oracle
    rng = np.random.default_rng(0)
    masks = []
    for i in range(len(records)):  # random rectangles; one blob of random pixels
        m = np.zeros((SIZE, SIZE), dtype=bool)
        y0, x0 = rng.integers(0, 20, size=2)
        m[y0 : y0 + rng.integers(4, 12), x0 : x0 + rng.integers(4, 12)] = True
        if i == 4:
            m = rng.random((SIZE, SIZE)) < 0.3
        masks.append(m)
    masks[7][:] = False  # an empty mask: no reference region
    order = rng.permutation(len(records))
    ids = [records[j].image_id for j in order] + ["not-an-image"]
    tensor = torch.from_numpy(np.stack([masks[j] for j in order] + [np.ones((SIZE, SIZE), bool)]))
    res = score_model(trained, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.5), masks=tensor,
                      mask_ids=ids, batch_size=4)
    check_against_oracle(res, cams, masks, (0.1, 0.5))
    assert math.isnan(res.per_image["iou@0.1"].iloc[7]) and res.n_no_reference == 1
    with pytest.raises(ValueError, match="no mask"):
        score_model(trained, BoxDataset(records, input_size=SIZE), masks=tensor[1:], mask_ids=ids[1:])


# --- class boxes, images without boxes ------------------------------------------------------


@pytest.fixture(scope="module")
def two_class_csv(tmp_path_factory):
    """Four 32x32 images (rendered synthetic pictures) in the csv layout, classes a, b:
    p0 (a): a box of class a and a box of class b; p1 (b): one box of class a only;
    p2 (a): no box; p3 (b): a fractional box of class b and a box of class a."""
    root = tmp_path_factory.mktemp("csvfix")
    (root / "images").mkdir()
    for i in range(4):
        Image.fromarray(render_sample(11, i, size=SIZE).image).save(root / "images" / f"p{i}.png")
    rows = [
        ("images/p0.png", "a", 2, 2, 14, 14, "a"),
        ("images/p0.png", "a", 16, 18, 30, 30, "b"),
        ("images/p1.png", "b", 4, 4, 20, 12, "a"),
        ("images/p2.png", "a", "", "", "", "", ""),
        ("images/p3.png", "b", 3.5, 7.2, 20.4, 25.0, "b"),
        ("images/p3.png", "b", 20, 0, 32, 6, "a"),
    ]
    text = "path,label,xmin,ymin,xmax,ymax,box_label\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    (root / "train.csv").write_text(text)
    own = {"p0": [(2, 2, 14, 14)], "p1": [], "p2": [], "p3": [(3.5, 7.2, 20.4, 25.0)]}
    union = {"p0": [(2, 2, 14, 14), (16, 18, 30, 30)], "p1": [(4, 4, 20, 12)], "p2": [],
             "p3": [(3.5, 7.2, 20.4, 25.0), (20, 0, 32, 6)]}
    return root, own, union


def test_class_boxes_only_and_images_without_boxes(two_class_csv, trained):
    root, own, union = two_class_csv
    records, classes = read_layout(root, "csv", "train")
    assert classes == ["a", "b"] and [r.image_id for r in records] == ["p0", "p1", "p2", "p3"]
    x = oracle_images([r.path for r in records])
    cams = oracle_cams(trained, x, trained.layer4)
    data = BoxDataset(records, input_size=SIZE)

    res_all = score_model(trained, data, thresholds=(0.1, 0.5))
    refs_all = [raster(union[r.image_id]) for r in records]
    check_against_oracle(res_all, cams, refs_all, (0.1, 0.5))
    assert res_all.n_no_reference == 1  # p2
    assert math.isnan(res_all.per_image["iou@0.1"].iloc[2]) and math.isnan(res_all.per_image["iou_b@0.1"].iloc[2])
    vals = res_all.per_image["iou@0.1"].iloc[[0, 1, 3]]
    assert res_all.iou() == pytest.approx(vals.mean(), abs=1e-12)
    assert not math.isnan(res_all.iou()) and not math.isnan(res_all.iou_b())

    res_own = score_model(trained, data, thresholds=(0.1, 0.5), class_boxes_only=True)
    refs_own = [raster(own[r.image_id]) for r in records]
    check_against_oracle(res_own, cams, refs_own, (0.1, 0.5))
    assert res_own.n_no_reference == 2  # p1 (only a box of another class) and p2
    assert res_own.iou() == pytest.approx(res_own.per_image["iou@0.1"].iloc[[0, 3]].mean(), abs=1e-12)
    assert res_own.per_image["iou@0.1"].iloc[0] != res_all.per_image["iou@0.1"].iloc[0]
    s = res_own.summary()
    assert s["n_no_reference"] == 2 and s["n_images"] == 4


def test_constant_cam_gives_zero_not_nan(synth, trained):
    """A zero head makes every Grad-CAM weight 0: the map is constant, normalises to zeros,
    the region is empty and IoU = IoU-B = 0 (README 'Empty cases')."""
    _, records, _ = synth
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model.fc.weight.zero_()
    res = score_model(model, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.5))
    for col in ("iou@0.1", "iou_b@0.1", "iou@0.5", "iou_b@0.5", "cam_area@0.1"):
        assert (res.per_image[col] == 0).all(), col
    assert res.iou() == 0 and res.iou_b() == 0


def test_bad_arguments(synth, trained):
    _, records, _ = synth
    with pytest.raises(ValueError, match="threshold"):
        score_model(trained, BoxDataset(records, input_size=SIZE), thresholds=())
    with pytest.raises(ValueError, match="no images"):
        score_model(trained, BoxDataset([], input_size=SIZE))


def test_label_outside_the_models_classes(synth, trained):
    _, records, _ = synth
    two = create_model("small_resnet", num_classes=2, width=8)
    with pytest.raises(ValueError, match="label 2 is outside the model's 2 classes"):
        score_model(two, BoxDataset(records, input_size=SIZE))


def test_skipped_images_are_counted(synth, trained, tmp_path):
    _, records, _ = synth
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    recs = list(records)
    recs[4] = replace(recs[4], path=bad)
    with pytest.warns(UserWarning, match="bad.png"):
        res = score_model(trained, BoxDataset(recs, input_size=SIZE, skip_bad=True), batch_size=4)
    assert res.n_skipped == 1 and res.n_images == 8
    assert records[4].image_id not in res.per_image["image_id"].tolist()
    full = score_model(trained, BoxDataset(records, input_size=SIZE), batch_size=4)
    kept = full.per_image[full.per_image["image_id"] != records[4].image_id].reset_index(drop=True)
    # per-image values do not depend on which images share a batch (eval mode)
    pd.testing.assert_frame_equal(res.per_image, kept, check_exact=False, atol=1e-6)
