"""CAM methods: `create_cam(name, model, target_layer=None, **kw)`, `list_cams()`,
`upsample_normalize(maps, size)`. One base class (`BaseCAM`) owns the hook; each method
is a short subclass in `methods.py`. See `camgap.cam.base` for the contract."""

from camgap.cam.base import (
    CAMS,
    BaseCAM,
    CamOutput,
    cam_name,
    create_cam,
    detect_linear_head,
    list_cams,
    register_cam,
    upsample_normalize,
)
from camgap.cam.methods import CAM, GradCAM, GradCAMpp, LayerCAM, SmoothGradCAMpp, XGradCAM

__all__ = [
    "CAMS",
    "BaseCAM",
    "CamOutput",
    "cam_name",
    "create_cam",
    "detect_linear_head",
    "list_cams",
    "register_cam",
    "upsample_normalize",
    "CAM",
    "GradCAM",
    "GradCAMpp",
    "LayerCAM",
    "SmoothGradCAMpp",
    "XGradCAM",
]
