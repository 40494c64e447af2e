"""score_model against independent oracles: pytorch-grad-cam's GradCAM for the normalised
upsampled CAM, numpy for the thresholded region, the box raster (pixel-centre rule), the
enclosing rectangle and the IoU."""

from __future__ import annotations

import copy
import math
import re
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
from camgap.errors import InputError, NonFiniteError
from camgap.measures.score import score_model
from camgap.models import create_model

pgc = pytest.importorskip("pytorch_grad_cam")

SIZE = 32
# Two checks, so that no assertion hinges on the last bits of a float, which differ between
# CPU kinds (Intel and AMD run different kernels): (1) camgap's normalised maps agree with
# pytorch-grad-cam's to MAP_ATOL, a continuous comparison; (2) every IoU / IoU-B / area is
# recomputed in numpy from camgap's *own* maps (kept through `keep_overlays`) and must agree
# to TOL. Comparing thresholded regions across the two implementations instead would depend
# on which side of rho a pixel within 1e-6 of it falls.
MAP_ATOL = 1e-4
TOL = 1e-6  # camgap divides the pixel counts in float32


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


def assert_value(got: float, expected: float, what: str) -> None:
    if math.isnan(expected):
        assert math.isnan(got), f"{what}: expected NaN, got {got}"
    else:
        assert abs(got - expected) <= TOL, f"{what}: {got} != {expected}"


def camgap_maps(result) -> np.ndarray:
    """The normalised maps camgap thresholded (scored with keep_overlays >= n_images)."""
    assert len(result.overlays) == result.n_images, "score with keep_overlays=len(data)"
    return np.stack([o["cam"].numpy() for o in result.overlays])


def check_against_oracle(result, cams: np.ndarray, refs: list[np.ndarray], thresholds) -> None:
    """camgap's maps agree with pytorch-grad-cam's; every per-image IoU, IoU-B and area is the
    numpy value on camgap's own map (thresholded as camgap does, in float32)."""
    maps = camgap_maps(result)
    np.testing.assert_allclose(maps, cams, atol=MAP_ATOL)
    for t in thresholds:
        for i, (cam, ref) in enumerate(zip(maps, refs)):
            row = result.per_image.iloc[i]
            region = cam >= np.float32(t)
            assert_value(row[f"iou@{t:g}"], np_iou(region, ref), f"iou image {i} rho {t}")
            assert_value(row[f"iou_b@{t:g}"], np_iou(enclosing(region), ref), f"iou_b image {i} rho {t}")
            assert_value(row[f"cam_area@{t:g}"], region.mean(), f"cam_area image {i} rho {t}")


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = write_synthetic(
        tmp_path_factory.mktemp("synth"), seed=3, classes=3, train_per_class=3, test_per_class=1, size=SIZE
    )
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
    """SmallResNet (width 8) trained a few steps on the 9 images so its CAMs have structure.
    Trained in float64, so that the kernels of one CPU kind or another change its weights by
    far less than anything the tests look at; scored in float32."""
    _, records, _ = synth
    torch.manual_seed(0)
    x = oracle_images([r.path for r in records]).double()
    y = torch.tensor([r.label for r in records])
    model = create_model("small_resnet", num_classes=3, width=8).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(20):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return model.float().eval()


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
    return score_model(
        trained,
        BoxDataset(records, input_size=SIZE),
        thresholds=(0.1, 0.3, 0.5),
        batch_size=4,
        keep_overlays=len(records),
    )


# --- tests ----------------------------------------------------------------------------------


def test_per_image_iou_matches_pytorch_grad_cam_and_numpy(base_result, oracle):
    _, cams, refs = oracle
    # the CAMs are non-trivial: most thresholded regions are neither empty nor the whole image
    areas = [(c >= 0.1).mean() for c in cams]
    assert sum(0 < a < 1 for a in areas) >= 6
    assert len({round(v, 6) for v in base_result.per_image["iou@0.1"]}) >= 5
    assert all(r.any() for r in refs)
    check_against_oracle(base_result, cams, refs, (0.1, 0.3, 0.5))
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
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > 1e-3).numpy()  # a near-tie may go either way on another CPU
    assert clear.sum() >= 7
    assert (df["pred"].to_numpy() == expected.argmax(1).numpy())[clear].all()
    assert df["correct"].tolist() == (df["pred"] == df["label"]).tolist()
    assert base_result.train_acc == pytest.approx(df["correct"].mean())


def test_overlays_keep_the_first_k_images(base_result, synth, trained, oracle):
    _, records, _ = synth
    _, cams, refs = oracle
    ov = score_model(trained, BoxDataset(records, input_size=SIZE), batch_size=4, keep_overlays=5).overlays
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
        res = score_model(
            trained, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.5), batch_size=4, target_layer=layer
        )
    finally:
        handle.remove()
    assert calls == {"n_calls": 3, "n_images": 9}
    assert res.n_images == 9
    assert all(p.grad is None for p in trained.parameters())


def test_layer3_matches_pytorch_grad_cam(synth, trained, oracle):
    _, records, _ = synth
    x, _, refs = oracle
    cams = oracle_cams(trained, x, trained.layer3)
    res = score_model(
        trained,
        BoxDataset(records, input_size=SIZE),
        thresholds=(0.1,),
        target_layer="layer3",
        keep_overlays=len(records),
    )
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
    res = score_model(
        trained,
        BoxDataset(records, input_size=SIZE),
        thresholds=(0.1, 0.5),
        masks=tensor,
        mask_ids=ids,
        batch_size=4,
        keep_overlays=len(records),
    )
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
    union = {
        "p0": [(2, 2, 14, 14), (16, 18, 30, 30)],
        "p1": [(4, 4, 20, 12)],
        "p2": [],
        "p3": [(3.5, 7.2, 20.4, 25.0), (20, 0, 32, 6)],
    }
    return root, own, union


def test_class_boxes_only_and_images_without_boxes(two_class_csv, trained):
    root, own, union = two_class_csv
    records, classes = read_layout(root, "csv", "train")
    assert classes == ["a", "b"] and [r.image_id for r in records] == ["p0", "p1", "p2", "p3"]
    x = oracle_images([r.path for r in records])
    cams = oracle_cams(trained, x, trained.layer4)
    data = BoxDataset(records, input_size=SIZE)

    res_all = score_model(trained, data, thresholds=(0.1, 0.5), keep_overlays=4)
    refs_all = [raster(union[r.image_id]) for r in records]
    check_against_oracle(res_all, cams, refs_all, (0.1, 0.5))
    assert res_all.n_no_reference == 1  # p2
    assert math.isnan(res_all.per_image["iou@0.1"].iloc[2]) and math.isnan(res_all.per_image["iou_b@0.1"].iloc[2])
    vals = res_all.per_image["iou@0.1"].iloc[[0, 1, 3]]
    assert res_all.iou() == pytest.approx(vals.mean(), abs=1e-12)
    assert not math.isnan(res_all.iou()) and not math.isnan(res_all.iou_b())

    res_own = score_model(trained, data, thresholds=(0.1, 0.5), class_boxes_only=True, keep_overlays=4)
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


def test_skipped_images_are_counted(synth, trained, oracle, tmp_path):
    _, records, _ = synth
    _, cams, refs = oracle
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    recs = list(records)
    recs[4] = replace(recs[4], path=bad)
    with pytest.warns(UserWarning, match="bad.png"):
        res = score_model(trained, BoxDataset(recs, input_size=SIZE, skip_bad=True), batch_size=4, keep_overlays=9)
    assert res.n_skipped == 1 and res.n_images == 8
    assert res.per_image["image_id"].tolist() == [r.image_id for i, r in enumerate(records) if i != 4]
    # the other images are scored as they are alone: maps within the oracle's tolerance, values
    # recomputed from the maps (batch composition may change a map's last bits on some CPUs)
    keep = [i for i in range(len(records)) if i != 4]
    check_against_oracle(res, cams[keep], [refs[i] for i in keep], (0.1,))


@pytest.mark.parametrize("where", ["parameter", "buffer"])
def test_non_finite_weights_are_named(synth, trained, where):
    _, records, _ = synth
    model = copy.deepcopy(trained)
    with torch.no_grad():
        if where == "parameter":
            model.layer3[0].conv2.weight[1, 0, 0, 0] = float("inf")
            name = "layer3.0.conv2.weight"
        else:
            model.layer1[0].bn1.running_var[2] = float("nan")
            name = "layer1.0.bn1.running_var"
    with pytest.raises(NonFiniteError, match=rf"non-finite values in {where} '{re.escape(name)}'.*NaN/inf"):
        score_model(model, BoxDataset(records, input_size=SIZE))


def test_non_finite_logits_from_finite_weights(synth, trained):
    """Finite weights, infinite outputs (here a hook on the head): the first such image is named."""
    _, records, _ = synth
    model = copy.deepcopy(trained)
    model.fc.register_forward_hook(lambda m, i, out: out * torch.tensor([1.0, float("inf"), 1.0]))
    with pytest.raises(NonFiniteError, match=rf"image {records[0].image_id}: the model's logits are not finite"):
        score_model(model, BoxDataset(records, input_size=SIZE))


def test_target_layer_is_reported(base_result, synth, trained):
    assert base_result.target_layer == "layer4" and base_result.summary()["target_layer"] == "layer4"
    _, records, _ = synth
    res = score_model(trained, BoxDataset(records[:2], input_size=SIZE), target_layer=trained.layer3[0])
    assert res.summary()["target_layer"] == "layer3.0"
    with pytest.raises(InputError, match="channel order must be one of rgb, bgr, got 'BGR'"):
        score_model(trained, BoxDataset(records[:2], input_size=SIZE), channel_order="BGR")


# --- a plain torch Dataset of (image, label, boxes) ---------------------------------------------


class _Triplets(torch.utils.data.Dataset):
    """What a user has: (image, label, boxes) per item, from a BoxDataset's decoded items."""

    def __init__(self, records, as_float: bool = False):
        self.items = [item[:3] for item in BoxDataset(records, input_size=SIZE)]
        self.as_float = as_float

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        image, label, boxes = self.items[i]
        return (image.float() / 255 if self.as_float else image), label, boxes.tolist()


@pytest.mark.parametrize("as_float", [False, True])
def test_plain_dataset_scores_as_the_box_dataset(base_result, synth, trained, as_float):
    """A Dataset yielding (image uint8 or float in [0,1], label, boxes) gives the BoxDataset's per-image
    values; image ids are the indices; the result names the CAM method by its canonical name."""
    _, records, _ = synth
    got = score_model(trained, _Triplets(records, as_float), cam="GradCAM", thresholds=(0.1, 0.3, 0.5), batch_size=4)
    want = base_result.per_image
    assert got.per_image["image_id"].tolist() == [str(i) for i in range(9)] and got.cam == "gradcam"
    for col in ("label", "pred", "iou@0.1", "iou@0.3", "iou_b@0.5", "cam_area@0.5"):
        np.testing.assert_allclose(got.per_image[col].to_numpy(), want[col].to_numpy(), atol=1e-6 if as_float else 0)
    torch.testing.assert_close(got.logits, base_result.logits, atol=1e-6, rtol=0)


def test_score_model_records_the_canonical_cam_name(synth, trained):
    _, records, _ = synth
    assert score_model(trained, _Triplets(records), cam="gradcampp", batch_size=9).cam == "gradcam++"


@pytest.mark.parametrize(
    "data", [[(torch.zeros(3, 8, 8, dtype=torch.uint8), 0, torch.zeros(0, 4))], "images/", torch.zeros(2, 3, 8, 8)]
)
def test_score_model_refuses_other_data_naming_what_it_accepts(trained, data):
    with pytest.raises(
        TypeError,
        match=r"cannot score on a (list|str|Tensor): expected a camgap BoxDataset, a "
        r"TensorStore, or a torch.utils.data.Dataset yielding \(image, label, boxes\)",
    ):
        score_model(trained, data)


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


_IMG = torch.zeros(3, 16, 16, dtype=torch.uint8)


@pytest.mark.parametrize(
    "items,error,message",
    [
        ([(_IMG, 0)], TypeError, r"item 0 of the dataset is a tuple of 2: expected .*\(image, label, boxes\)"),
        (
            [(torch.zeros(3, 16, 12, dtype=torch.uint8), 0, [])],
            InputError,
            r"item 0: image of shape \(3, 16, 12\); "
            r"expected a square \[3, S, S\] image",
        ),
        (
            [(_IMG, 0, []), (torch.zeros(3, 8, 8, dtype=torch.uint8), 1, [])],
            InputError,
            r"item 1: image of shape \(3, 8, 8\), item 0's is \(3, 16, 16\): all images must have one size",
        ),
        ([(_IMG, 0, []), (_IMG.float(), 1, [])], InputError, r"item 1: a torch.float32 image, item 0's is torch.uint8"),
        ([(_IMG, 0, [[1, 2, 3]])], InputError, r"item 0: boxes of shape \(1, 3\); expected \[n, 4\] xyxy"),
        ([(_IMG.long(), 0, [])], InputError, r"item 0: image of dtype torch.int64; expected uint8"),
    ],
)
def test_plain_dataset_bad_items(trained, items, error, message):
    with pytest.raises(error, match=message):
        score_model(trained, _Items(items), batch_size=2)


# --- ScoreOptions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, error, message",
    [
        ({"thresholds": (1.5,)}, InputError, r"threshold 1\.5 is outside \[0, 1\): the CAM threshold rho"),
        ({"thresholds": ()}, InputError, "give at least one threshold"),
        ({"batch_size": 0}, InputError, "batch_size must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, InputError, "batch_size must be an integer >= 1, got 2.5"),
        ({"keep_overlays": -1}, InputError, "keep_overlays must be an integer >= 0, got -1"),
        ({"channel_order": "BGR"}, InputError, "channel order must be one of rgb, bgr, got 'BGR'"),
        ({"std": (0.2, 0.0, 0.2)}, InputError, r"std must be three positive numbers .*\(0\.2, 0\.0, 0\.2\)"),
        ({"mean": (0.5, 0.5)}, InputError, r"mean must be three finite numbers"),
        ({"device": "tpu9"}, InputError, "device 'tpu9' is not a torch device"),
        ({"cam": "nocam"}, KeyError, "unknown CAM method 'nocam'"),
        ({"cam_kwargs": 3}, InputError, "cam_kwargs must be a mapping"),
    ],
)
def test_score_options_check_each_field(settings, error, message):
    from camgap.measures.score import ScoreOptions

    with pytest.raises(error, match=message):
        ScoreOptions(**settings)


def test_score_options_normalise_and_are_frozen():
    import dataclasses

    import camgap
    from camgap.measures.score import ScoreOptions

    o = ScoreOptions(cam="GradCAMpp", thresholds=0.2, mean=[0.5, 0.4, 0.3], device="cpu")
    assert (o.cam, o.thresholds, o.mean, o.device) == ("gradcam++", (0.2,), (0.5, 0.4, 0.3), torch.device("cpu"))
    assert ScoreOptions().std == tuple(IMAGENET_STD) and ScoreOptions().cam_kwargs == {}
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.cam = "gradcam"  # type: ignore[misc]
    assert ScoreOptions.of(o, batch_size=8) == dataclasses.replace(o, batch_size=8)
    with pytest.raises(TypeError, match=r"unknown score option\(s\) \['bogus'\]"):
        ScoreOptions.of(o, bogus=1)
    assert camgap.ScoreOptions is ScoreOptions


def test_options_and_keywords_score_alike(synth, trained):
    from camgap.measures.score import ScoreOptions

    _, records, _ = synth
    data = BoxDataset(records, input_size=SIZE)
    by_keywords = score_model(trained, data, cam="gradcam", thresholds=(0.1, 0.5), batch_size=4)
    options = ScoreOptions(thresholds=(0.1, 0.5), batch_size=4)
    by_options = score_model(trained, data, options)
    pd.testing.assert_frame_equal(by_keywords.per_image, by_options.per_image)
    # a keyword replaces that field of the options
    one = score_model(trained, data, options, thresholds=(0.5,))
    assert one.thresholds == (0.5,) and one.iou() == by_options.iou(0.5)
    with pytest.raises(TypeError, match=r"unknown score option\(s\) \['thresh'\]"):
        score_model(trained, data, thresh=(0.1,))
    with pytest.raises(TypeError, match="options must be a ScoreOptions, got a str"):
        score_model(trained, data, "gradcam")


# --- the caller's model -------------------------------------------------------------------


def mixed_mode_copy(model):
    """A copy in train mode with one BatchNorm frozen in eval mode and one weight frozen."""
    m = copy.deepcopy(model).train()
    m.bn1.eval()
    m.fc.weight.requires_grad_(False)
    return m


def flags(model) -> tuple[dict, dict]:
    return (
        {name: m.training for name, m in model.named_modules()},
        {name: p.requires_grad for name, p in model.named_parameters()},
    )


def test_score_model_gives_the_model_back_in_its_own_mode(synth, trained, base_result):
    _, records, _ = synth
    model = mixed_mode_copy(trained)
    before, state = flags(model), copy.deepcopy(model.state_dict())
    assert before[0][""] and not before[0]["bn1"] and not before[1]["fc.weight"]
    result = score_model(model, BoxDataset(records, input_size=SIZE), thresholds=(0.1, 0.3, 0.5), batch_size=4)
    assert flags(model) == before
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no BatchNorm statistic moved
    pd.testing.assert_frame_equal(result.per_image, base_result.per_image)  # scored in eval mode all the same


def test_score_model_gives_the_mode_back_when_it_fails(synth, trained):
    _, records, _ = synth
    model = mixed_mode_copy(trained)
    before = flags(model)
    with pytest.raises(InputError, match=r"no mask for 9 images"):
        score_model(
            model, BoxDataset(records, input_size=SIZE), masks=torch.zeros(1, SIZE, SIZE, dtype=bool), mask_ids=["x"]
        )
    assert flags(model) == before
