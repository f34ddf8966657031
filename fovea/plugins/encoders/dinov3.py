"""The DINOv3 ViT backbone shared by the built-in encoders: size presets, loading, input normalisation.

DINOv3 ViT-S/16 (SPEC.md "Components"): hidden 384, 12 layers, 6 heads, 4 register tokens, patch 16,
RoPE on patches only. Token order in every layer: ``[CLS, registers..., patches...]``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from fovea.core.pretrained import load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SIZES: dict[str, dict] = {
    # debug size for tests and the quick start: 64 px frames give 8x8 = 64 patches
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_register_tokens=4, patch_size=8, image_size=64),
    # facebook/dinov3-vits16-pretrain-lvd1689m's architecture
    "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                   num_register_tokens=4, patch_size=16, image_size=224),
}


class DINOv3Options(BaseModel):
    """Options every DINOv3-based encoder takes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    pretrained: str | None = None
    """Hub id or local directory (SPEC: facebook/dinov3-vits16-pretrain-lvd1689m); unset: random init at ``size``."""
    size: Literal["tiny", "vits16"] = "vits16"
    """Architecture for random init when ``pretrained`` is unset; ``tiny`` is the debug size."""
    trainable: bool = True
    """Train the DINOv3 backbone (SPEC: true). The query projections always train."""
    activation_checkpointing: bool = False
    """Keep only each block's input for backward and run the block again there (non-reentrant
    ``torch.utils.checkpoint``): less activation memory for about one more forward of the encoder."""


def load_dinov3(options: DINOv3Options, key: str = "model.encoder.pretrained"):
    """A ``DINOv3ViTModel``: from ``options.pretrained``, or randomly initialised at ``options.size``."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    if options.pretrained:
        model = load_pretrained(
            lambda p: DINOv3ViTModel.from_pretrained(p, dtype=torch.float32, attn_implementation="sdpa"),
            options.pretrained, "DINOv3 encoder", key)
    else:
        model = DINOv3ViTModel(DINOv3ViTConfig(**SIZES[options.size], attn_implementation="sdpa"))
    model.requires_grad_(options.trainable)
    model.embeddings.mask_token.requires_grad_(False)  # only used by masked-image pre-training
    if options.activation_checkpointing:   # the blocks a forward of the backbone runs (posthoc, masked_forward)
        from fovea.core.compile import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    return model


def compile_layers(model, **options) -> None:
    """Compile each block of a DINOv3 backbone in place (names unchanged)."""
    for layer in model.model.layer:
        layer.compile(**options)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1], (N, 3, H, W) -> ImageNet-normalised, as DINOv3 was trained."""
    mean = frames.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = frames.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (frames - mean) / std
