"""CAM methods, each a short subclass of `BaseCAM`. Formulas follow pytorch-grad-cam 1.5.5
(same epsilons), so normalised upsampled maps agree with it. With A [B,C,h,w] the layer
activation, g = d logit_c / dA and S_k = sum_ij A_k(i,j):

    cam              ReLU(sum_k W[c,k] A_k)                       (fc weights, no gradient)
    gradcam          ReLU(sum_k mean_ij(g_k) A_k)                  (= cam / (h*w) on GAP+Linear)
    gradcam++        w_k = sum_ij ReLU(g) * g^2 / (2 g^2 + S_k g^3 + 1e-6)   (0 where g == 0)
    smoothgradcam++  gradcam++ with g, g^2, g^3 replaced by their means over noisy inputs
    layercam         ReLU(sum_k ReLU(g_k) * A_k)
    xgradcam         w_k = sum_ij g_k A_k / (S_k + 1e-7)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from camgap.cam.base import BaseCAM, Gradients, _resolve_module, _spatial_sum, _weighted_sum, register_cam
from camgap.errors import InputError


def _hw(acts: Tensor) -> int:
    return acts.shape[-2] * acts.shape[-1]


@register_cam("cam")
class CAM(BaseCAM):
    """Class activation map (Zhou et al. 2016): the head's weights of the target class.

    `fc_layer` (module or dotted name) defaults to the detected GAP + Linear head, else
    `model.fc`. No gradients; `closed_form` is accepted and has no effect. The raw map has
    no 1/(h*w) factor, so it is (h*w) times the raw Grad-CAM on a GAP + Linear model."""

    uses_gradients = False

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        fc_layer: nn.Module | str | None = None,
        closed_form: bool | None = None,
        reshape: str | None = None,
    ) -> None:
        super().__init__(model, target_layer, closed_form=closed_form, reshape=reshape)
        fc = _resolve_module(model, fc_layer, "fc layer") or self._head or getattr(model, "fc", None)
        if not isinstance(fc, nn.Linear):
            raise InputError("CAM needs a linear head: pass fc_layer= (an nn.Linear on the pooled features)")
        self.fc_layer: nn.Linear = fc

    def _map(self, acts: Tensor, grads: Gradients | None, targets: Tensor) -> Tensor:
        weight = self.fc_layer.weight.detach()
        if weight.shape[1] != acts.shape[1]:
            raise InputError(f"fc layer takes {weight.shape[1]} features, target layer has {acts.shape[1]} channels")
        return _weighted_sum(weight[targets].float(), acts)


@register_cam("gradcam", "grad-cam")
class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradient."""

    def _map(self, acts: Tensor, grads: Gradients | None, targets: Tensor) -> Tensor:
        assert isinstance(grads, Tensor)
        return _weighted_sum(grads.flatten(2).mean(-1), acts)


@register_cam("gradcam++", "gradcampp", "grad-cam++")
class GradCAMpp(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), eq. 19 with the exponential head dropped,
    as pytorch-grad-cam computes it."""

    eps: float = 1e-6

    def _moments(self, grads: Gradients | None) -> tuple[Tensor, Tensor, Tensor]:
        if isinstance(grads, tuple):
            return grads
        assert grads is not None
        g2 = grads * grads
        return grads, g2, g2 * grads

    def _map(self, acts: Tensor, grads: Gradients | None, targets: Tensor) -> Tensor:
        g1, g2, g3 = self._moments(grads)
        sum_acts = acts.flatten(2).sum(-1)[:, :, None, None]
        alpha = g2 / (2 * g2 + sum_acts * g3 + self.eps)
        alpha = torch.where(g1 != 0, alpha, torch.zeros_like(alpha))
        weights = _spatial_sum(g1.clamp_min(0) * alpha, _hw(acts))
        return _weighted_sum(weights, acts)


@register_cam("smoothgradcam++", "smoothgradcampp", "smooth-grad-cam++")
class SmoothGradCAMpp(GradCAMpp):
    """Smooth Grad-CAM++ (Omeiza et al. 2019): the Grad-CAM++ weights with g, g^2, g^3
    replaced by their means over `n_samples` noisy copies x + N(0, sigma^2), where
    sigma = noise_std * (max(x) - min(x)) per image (SmoothGrad's noise level). The target
    is the predicted class of the clean image; activations (S_k and the map) are the clean
    ones. Costs 1 + n_samples forward passes (one graph alive at a time).

    Noise comes from a `torch.Generator` on the images' device, reseeded with `seed` at every
    call: the same batch always gives the same maps. Under the closed form the layer
    gradient does not depend on the input, so the noise has no effect and the result is
    Grad-CAM++ from one forward pass."""

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | str | None = None,
        *,
        n_samples: int = 8,
        noise_std: float = 0.15,
        seed: int = 0,
        closed_form: bool | None = None,
        reshape: str | None = None,
    ) -> None:
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        if noise_std < 0:
            raise InputError(f"noise_std must be >= 0, got {noise_std}")
        super().__init__(model, target_layer, closed_form=closed_form, reshape=reshape)
        self.n_samples, self.noise_std, self.seed = int(n_samples), float(noise_std), int(seed)

    def _clean_pass_needs_graph(self) -> bool:
        return False

    def _gradients(self, images: Tensor, acts: Tensor, logits: Tensor, targets: Tensor) -> Gradients:
        if self.closed_form:
            return self._closed_form_gradients(acts, targets)
        gen = torch.Generator(device=images.device)
        gen.manual_seed(self.seed)
        flat = images.detach().flatten(1)
        sigma = (self.noise_std * (flat.amax(1) - flat.amin(1)))[:, None, None, None]
        m1 = m2 = m3 = None
        for _ in range(self.n_samples):
            noise = torch.randn(images.shape, generator=gen, device=images.device, dtype=images.dtype)
            noisy_acts, noisy_logits = self._forward(images.detach() + sigma * noise, grad=True)
            g = self._autograd(noisy_acts, noisy_logits, targets).float()
            del noisy_acts, noisy_logits
            g2 = g * g
            if m1 is None:
                m1, m2, m3 = g, g2, g2 * g
            else:
                m1.add_(g)
                m2.add_(g2)
                m3.addcmul_(g2, g)
        assert m1 is not None and m2 is not None and m3 is not None
        n = float(self.n_samples)
        return m1.div_(n), m2.div_(n), m3.div_(n)


@register_cam("layercam", "layer-cam")
class LayerCAM(BaseCAM):
    """LayerCAM (Jiang et al. 2021): positive gradients weight each activation element."""

    def _map(self, acts: Tensor, grads: Gradients | None, targets: Tensor) -> Tensor:
        assert isinstance(grads, Tensor)
        pos = grads.clamp_min(0)
        if pos.shape[-2:] == (1, 1):
            return _weighted_sum(pos[:, :, 0, 0], acts)
        return _weighted_sum(pos, acts)


@register_cam("xgradcam", "xgrad-cam")
class XGradCAM(BaseCAM):
    """XGrad-CAM (Fu et al. 2020): w_k = sum_ij g_k A_k / (sum_ij A_k + 1e-7)."""

    eps: float = 1e-7

    def _map(self, acts: Tensor, grads: Gradients | None, targets: Tensor) -> Tensor:
        assert isinstance(grads, Tensor)
        sum_acts = acts.flatten(2).sum(-1)
        if grads.shape[-2:] == (1, 1) and _hw(acts) > 1:
            weighted = grads[:, :, 0, 0] * sum_acts
        else:
            weighted = (grads * acts).flatten(2).sum(-1)
        return _weighted_sum(weighted / (sum_acts + self.eps), acts)


__all__ = ["CAM", "GradCAM", "GradCAMpp", "SmoothGradCAMpp", "LayerCAM", "XGradCAM"]
