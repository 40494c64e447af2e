"""CAM methods against pytorch-grad-cam 1.5.5 and Captum, closed form vs autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from camgap.cam import CAMS, GradCAM, cam_name, create_cam, list_cams, upsample_normalize
from camgap.errors import InputError
from camgap.models import create_model

pgc = pytest.importorskip("pytorch_grad_cam")
captum_attr = pytest.importorskip("captum.attr")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

GRADIENT_METHODS = ["gradcam", "gradcam++", "layercam", "xgradcam"]
ORACLE = {
    "gradcam": pgc.GradCAM,
    "gradcam++": pgc.GradCAMPlusPlus,
    "layercam": pgc.LayerCAM,
    "xgradcam": pgc.XGradCAM,
}
TOL = 1e-4


def _clear_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=7).eval()
    x = torch.randn(4, 3, 128, 128)  # layer4: 4x4
    return model, x


@pytest.fixture(scope="module")
def small_trained():
    """SmallResNet trained a few steps on images whose class sets where a bright square is,
    so its maps have real structure. Trained in float64, so that the kernels of one CPU kind or
    another change its weights by far less than anything the tests look at; used in float32."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    n, k, s = 64, 4, 32
    labels = torch.arange(n) % k
    x = 0.3 * torch.randn(n, 3, s, s, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, q = divmod(c, 2)
        x[i, :, 4 + 14 * r : 14 + 14 * r, 4 + 14 * q : 14 + 14 * q] += 2.0
    model = create_model("small_resnet", num_classes=k, width=8).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(25):
        idx = torch.randint(0, n, (16,), generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[idx].double()), labels[idx]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.float().eval()
    return model, x[:6]  # layer4: 4x4


def _model(request, which):
    return request.getfixturevalue({"resnet18": "resnet18", "small": "small_trained"}[which])


def _oracle(method, model, layer, x, targets):
    with ORACLE[method](model=model, target_layers=[layer]) as cam:
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    _clear_grads(model)  # pytorch-grad-cam calls loss.backward()
    return torch.from_numpy(out)


def _nontrivial(heat: torch.Tensor) -> bool:
    flat = heat.flatten(1)
    return bool(((flat.amax(1) - flat.amin(1)) > 0.5).all())


@pytest.mark.parametrize("which", ["resnet18", "small"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_matches_pytorch_grad_cam(request, which, method):
    model, x = _model(request, which)
    with create_cam(method, model) as cam:
        assert cam.closed_form
        out = cam(x)
    pred = out.logits.argmax(1)
    ref = _oracle(method, model, model.layer4, x, pred)
    heat = upsample_normalize(out.maps, x.shape[-2:])
    assert heat.shape == ref.shape
    assert _nontrivial(heat), "maps too flat to compare"
    diff = (heat - ref).abs().max().item()
    print(f"{which} {method} closed-form vs pytorch-grad-cam: max abs diff {diff:.2e}")
    assert diff < TOL
    with create_cam(method, model, closed_form=False) as cam:
        diff_ag = (upsample_normalize(cam(x).maps, x.shape[-2:]) - ref).abs().max().item()
    print(f"{which} {method} autograd vs pytorch-grad-cam: max abs diff {diff_ag:.2e}")
    assert diff_ag < TOL


@pytest.mark.parametrize("which", ["resnet18", "small"])
def test_raw_gradcam_matches_captum(request, which):
    model, x = _model(request, which)
    with create_cam("gradcam", model) as cam:
        out = cam(x)
    pred = out.logits.argmax(1)
    ref = captum_attr.LayerGradCam(model, model.layer4).attribute(x, target=pred, relu_attributions=True)
    _clear_grads(model)
    ref = ref.detach()[:, 0]
    assert out.maps.shape == ref.shape
    diff = (out.maps - ref).abs().max().item()
    print(f"{which} raw gradcam vs captum: max abs diff {diff:.2e} (max value {ref.max().item():.3g})")
    torch.testing.assert_close(out.maps, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("which", ["resnet18", "small"])
@pytest.mark.parametrize("method", list_cams())
def test_closed_form_equals_autograd(request, which, method):
    model, x = _model(request, which)
    targets = torch.arange(x.shape[0]) % 3  # not the prediction: any class works
    kw = {"n_samples": 2, "noise_std": 0.2} if method == "smoothgradcam++" else {}
    with (
        create_cam(method, model, closed_form=True, **kw) as closed,
        create_cam(method, model, closed_form=False, **kw) as grad,
    ):
        assert closed.closed_form == (method != "cam") and not grad.closed_form
        a, b = closed(x, targets), grad(x, targets)
    torch.testing.assert_close(a.logits, b.logits)
    scale = b.maps.abs().max().clamp_min(1e-12)
    assert (a.maps - b.maps).abs().max() / scale < 1e-5
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_is_cam_over_hw(resnet18):
    model, x = resnet18
    with create_cam("cam", model) as cam, create_cam("gradcam", model) as gradcam:
        m_cam, m_grad = cam(x).maps, gradcam(x).maps
    hw = m_cam.shape[-2] * m_cam.shape[-1]
    torch.testing.assert_close(m_grad * hw, m_cam, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("closed_form", [True, False])
def test_targets_none_is_argmax_and_logits_are_the_forward_pass(resnet18, closed_form):
    model, x = resnet18
    with torch.no_grad():
        logits = model(x)
    with create_cam("gradcam", model, closed_form=closed_form) as cam:
        out = cam(x)
        explicit = cam(x, logits.argmax(1))
        other = cam(x, (logits.argmax(1) + 1) % logits.shape[1])
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.maps, explicit.maps)
    assert not torch.allclose(out.maps, other.maps)


@pytest.mark.parametrize("method", list_cams())
@pytest.mark.parametrize("closed_form", [None, False])
def test_one_forward_pass_no_param_grads_no_graph(resnet18, method, closed_form):
    model, x = resnet18
    x = x[:2]
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    kw = {"n_samples": 3} if method == "smoothgradcam++" else {}
    try:
        with create_cam(method, model, closed_form=closed_form, **kw) as cam:
            out = cam(x)
    finally:
        handle.remove()
    smooth_passes = 3 if method == "smoothgradcam++" and closed_form is False else 0
    assert len(calls) == 1 + smooth_passes
    assert all(p.grad is None for p in model.parameters())
    assert out.maps.grad_fn is None and not out.maps.requires_grad
    assert out.logits.grad_fn is None and not out.logits.requires_grad
    assert out.maps.dtype == torch.float32 and (out.maps >= 0).all()
    assert torch.is_grad_enabled()


def _seq_net(num_classes: int = 3) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1, stride=2),
        nn.ReLU(),  # "3": target layer
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 16),
        nn.ReLU(),
        nn.Linear(16, num_classes),
    ).eval()


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_fallback_non_resnet_matches_pytorch_grad_cam(method):
    model = _seq_net()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with create_cam(method, model, target_layer="3") as cam:
        assert not cam.closed_form
        out = cam(x)
    ref = _oracle(method, model, model[3], x, out.logits.argmax(1))
    heat = upsample_normalize(out.maps, 32)
    diff = (heat - ref).abs().max().item()
    print(f"sequential {method} autograd vs pytorch-grad-cam: max abs diff {diff:.2e}")
    assert diff < TOL
    assert all(p.grad is None for p in model.parameters())


def test_unknown_family_needs_a_layer_and_forced_closed_form_errors():
    model = _seq_net()
    with pytest.raises(InputError, match="cannot choose a target layer for a Sequential.*--layer"):
        create_cam("gradcam", model)  # never a guess such as the last Conv2d
    with create_cam("gradcam", model, target_layer="4") as cam:
        assert cam.target_layer is model[4] and cam.target_layer_name == "4" and not cam.closed_form
        assert cam(torch.randn(2, 3, 16, 16)).maps.shape == (2, 8, 8)
    with create_cam("gradcam", model, target_layer=model[4]) as cam:
        assert cam.target_layer_name == "4"
    with pytest.raises(ValueError, match="closed_form=True"):
        create_cam("gradcam", model, target_layer="4", closed_form=True)
    with pytest.raises(ValueError, match="linear head"):
        create_cam("cam", model, target_layer="4")
    with create_cam("cam", model, target_layer="5", fc_layer=model[8]) as cam:  # Linear(64, .) vs 16 channels
        with pytest.raises(ValueError, match="features"):
            cam(torch.randn(1, 3, 16, 16))


def test_detection_is_conservative(resnet18):
    model, x = resnet18
    with create_cam("gradcam", model, target_layer="layer3") as cam:
        assert not cam.closed_form
        out = cam(x[:2])
    ref = _oracle("gradcam", model, model.layer3, x[:2], out.logits.argmax(1))
    assert (upsample_normalize(out.maps, x.shape[-2:]) - ref).abs().max() < TOL

    class Custom(type(model)):
        def forward(self, x):
            return super().forward(x) * 2

    custom = Custom.__new__(Custom)
    custom.__dict__ = dict(model.__dict__)
    with create_cam("gradcam", custom) as cam:
        assert not cam.closed_form
    with create_cam("gradcam", model, target_layer=model.layer4) as cam:
        assert cam.closed_form


def test_upsample_normalize():
    maps = torch.zeros(4, 3, 3)
    maps[1] = 0.3  # constant, not zero
    maps[2] = torch.tensor([[0.0, 1.0, 2.0], [0.5, 0.5, 0.5], [3.0, 0.0, 1.0]])
    maps[3] = 1e-30 * torch.arange(9.0).view(3, 3)  # tiny but not constant
    out = upsample_normalize(maps, (12, 10))
    assert out.shape == (4, 12, 10) and not out.isnan().any()
    assert (out[0] == 0).all() and (out[1] == 0).all()
    up = F.interpolate(maps[2:3, None], size=(12, 10), mode="bilinear", align_corners=False)[0, 0]
    torch.testing.assert_close(out[2], (up - up.min()) / (up.max() - up.min()))
    for i in (2, 3):
        assert out[i].min() == 0 and abs(out[i].max().item() - 1) < 1e-6
    assert upsample_normalize(maps, 6).shape == (4, 6, 6)


def test_smoothgradcampp_seeded():
    model = _seq_net()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))

    def run(**kw):
        with create_cam("smoothgradcam++", model, target_layer="3", **kw) as cam:
            return cam(x)

    a, b = run(seed=5, n_samples=4, noise_std=0.3), run(seed=5, n_samples=4, noise_std=0.3)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    c = run(seed=6, n_samples=4, noise_std=0.3)
    assert not torch.allclose(a.maps, c.maps)
    with create_cam("smoothgradcam++", model, target_layer="3", seed=5, n_samples=4, noise_std=0.3) as cam:
        torch.testing.assert_close(cam(x).maps, a.maps, rtol=0, atol=0)  # reseeded at each call
    # no noise, one sample: Grad-CAM++
    with create_cam("gradcam++", model, target_layer="3") as cam:
        pp = cam(x)
    torch.testing.assert_close(run(n_samples=1, noise_std=0.0).maps, pp.maps)
    torch.testing.assert_close(a.logits, pp.logits)  # logits of the clean pass
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        run(n_samples=0)


def test_eval_mode_required_and_never_changed(small_trained):
    model, x = small_trained
    model.train()
    try:
        with create_cam("gradcam", model) as cam:
            with pytest.raises(RuntimeError, match="eval"):
                cam(x)
        assert model.training
    finally:
        model.eval()


def test_hooks_removed_and_registry(resnet18):
    model, x = resnet18
    n_hooks = len(model.layer4._forward_hooks)
    with create_cam("gradcam", model, target_layer="layer4") as cam:
        assert len(model.layer4._forward_hooks) == n_hooks + 1
        with torch.no_grad():
            model(x[:1])  # the model works normally between calls
    assert len(model.layer4._forward_hooks) == n_hooks
    with pytest.raises(RuntimeError, match="closed"):
        cam(x[:1])
    cam.close()  # idempotent
    create_cam("xgradcam", model)  # dropped without close(): the hook goes with the object
    import gc

    gc.collect()
    assert len(model.layer4._forward_hooks) == n_hooks
    assert list_cams() == sorted(["cam", "gradcam", "gradcam++", "smoothgradcam++", "layercam", "xgradcam"])
    with pytest.raises(KeyError, match="unknown CAM method 'scorecam'; known: cam, gradcam, gradcam"):
        create_cam("scorecam", model)
    with pytest.raises(ValueError, match="no layer"):
        create_cam("gradcam", model, target_layer="layer9")
    with create_cam("gradcam", model) as cam:
        with pytest.raises(ValueError, match="targets"):
            cam(x[:2], torch.tensor([0]))
        with pytest.raises(ValueError, match="targets"):
            cam(x[:2], torch.tensor([0, 99]))


@pytest.mark.parametrize(
    "alias,name",
    [
        ("gradcampp", "gradcam++"),
        ("smoothgradcampp", "smoothgradcam++"),
        ("Grad-CAM++", "gradcam++"),
        ("GradCAM", "gradcam"),
        ("grad-cam", "gradcam"),
        ("LayerCAM", "layercam"),
    ],
)
def test_reference_release_names_are_aliases(resnet18, alias, name):
    """The reference release's spellings build the same method; the object records the canonical name."""
    model, x = resnet18
    with create_cam(alias, model) as cam, create_cam(name, model) as same:
        assert type(cam) is type(same) and cam.name == name
        assert torch.equal(cam(x[:2]).maps, same(x[:2]).maps)
    assert cam_name(alias) == name
    assert alias.lower() not in list_cams() or alias.lower() == name  # aliases are not listed as methods
    assert "gradcampp" in CAMS.aliases("gradcam++")


def test_cam_registry_refuses_a_duplicate():
    from camgap.cam import register_cam

    with pytest.raises(InputError, match="CAM method alias 'gradcampp' is registered already"):
        register_cam("mycam", "gradcampp")(type("MyCAM", (GradCAM,), {}))
    assert "mycam" not in list_cams()
