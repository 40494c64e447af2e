"""The preprocessing vocabulary: ImageNet's mean and std, the resize modes, the channel orders.

Plain values without torch, so that run configs and the command line's parser read them
without importing torch (`camgap --help` stays fast)."""

from __future__ import annotations

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RESIZE_MODES", "CHANNEL_ORDERS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("resize", "resize_crop")
CHANNEL_ORDERS = ("rgb", "bgr")
