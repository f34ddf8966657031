"""The module's older name, from when DINOv3 was the only backbone: see ``fovea.plugins.encoders.backbone``.

``DINOv3Options`` (now ``BackboneOptions``, with ``backbone = "dinov3"`` by default), ``load_dinov3``,
``normalize`` and ``SIZES`` (DINOv3's presets) stay importable from here for plugins written against it.
"""

from __future__ import annotations

from fovea.plugins.encoders.backbone import IMAGENET_MEAN, IMAGENET_STD, DINOv3, normalize
from fovea.plugins.encoders.backbone import BackboneOptions as DINOv3Options
from fovea.plugins.encoders.backbone import load_backbone as load_dinov3

SIZES = DINOv3.sizes

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SIZES", "DINOv3Options", "load_dinov3", "normalize"]
