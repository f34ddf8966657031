"""The ViT backbones shared by the built-in encoders: options, size presets, loading, normalisation, and
the few per-layer operations the deep encoder needs.

- ``dinov3`` (SPEC.md "Components", the default): DINOv3 ViT-S/16 through transformers' ``DINOv3ViTModel``.
  Hidden 384, 12 layers, 6 heads, 4 register tokens, 16-px patches, RoPE on the patches only.
- ``dinov2`` (the backbone fVLM actually trained): DINOv2 ViT-S/14 (facebook/dinov2-small) through
  ``Dinov2Model``. Hidden 384, 12 layers, 6 heads, no registers, 14-px patches, learned position
  embeddings added once to the embeddings (interpolated to the frame size), no RoPE.

Token order in every layer: ``[CLS, registers..., patches...]``. Both transformers blocks name their
parts alike (``norm1``, ``attention.{q,k,v,o}_proj``, ``layer_scale1``, ``drop_path``, ``norm2``, ``mlp``,
``layer_scale2``); a ``ViT`` adapter holds what differs: where the layers and the final norm live, the
position information (RoPE tables or none), the attention's head count and dropout, and the call of
transformers' own block.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from fovea.core.errors import ConfigError
from fovea.core.pretrained import load_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(frames: torch.Tensor) -> torch.Tensor:
    """Frames in [0, 1], (N, 3, H, W) -> ImageNet-normalised, as DINOv3 and DINOv2 were trained."""
    mean = frames.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = frames.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (frames - mean) / std


class ViT:
    """One transformers ViT seen through the operations the encoders need (a subclass per backbone).

    The class attributes describe the backbone (its presets, its transformers classes); an instance wraps
    one built model. It holds no parameters: the encoder keeps the model as ``encoder.backbone``.
    """

    name: ClassVar[str]
    """The ``backbone`` option's value."""
    title: ClassVar[str]
    """How messages name it."""
    model_type: ClassVar[str]
    """transformers' ``model_type`` of its checkpoints."""
    model_class: ClassVar[str]
    config_class: ClassVar[str]
    sizes: ClassVar[dict[str, dict]]
    """Random-init presets: the backbone's ViT-S and ``tiny``, the debug size."""
    default_size: ClassVar[str]
    layers_at: ClassVar[str]
    """Where the transformer blocks are in the model (a submodule path)."""
    norm_at: ClassVar[str]
    """Where the final norm is."""

    def __init__(self, model: nn.Module):
        self.model = model

    # ------------------------------------------------------------------ building

    @classmethod
    def load(cls, options: BackboneOptions, key: str = "model.encoder.pretrained") -> nn.Module:
        """The transformers model: from ``options.pretrained``, or randomly initialised at ``options.size``."""
        import transformers

        model_class = getattr(transformers, cls.model_class)
        if options.pretrained:
            def load(path: str):
                cls._check_checkpoint(path, options.pretrained, key)
                return model_class.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")

            model = load_pretrained(load, options.pretrained, f"{cls.title} encoder", key)
        else:
            config = getattr(transformers, cls.config_class)(**cls.sizes[options.size], attn_implementation="sdpa")
            model = model_class(config)
        cls._check_model(model)
        model.requires_grad_(options.trainable)
        mask_token = getattr(model.embeddings, "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)  # only used by masked-image pre-training
        return model

    @classmethod
    def _check_model(cls, model: nn.Module) -> None:
        """Refuse a transformers version whose modules this adapter does not know."""

    @classmethod
    def _check_checkpoint(cls, path: str, pretrained: str, key: str) -> None:
        """A checkpoint of another backbone would load with its mismatched tensors re-initialised or fail
        mid-load: one clear error instead, naming the ``backbone`` that reads it."""
        from transformers import PretrainedConfig

        found = PretrainedConfig.get_config_dict(path)[0].get("model_type")
        if found == cls.model_type:
            return
        option = key.rsplit(".", 1)[0] + ".backbone"
        fits = next((b.name for b in BACKBONES.values() if b.model_type == found), None)
        fix = f'set {option} = "{fits}"' if fits else f"name a {cls.title} checkpoint"
        raise ConfigError(f"{key} = '{pretrained}' holds a `{found}` model, but {option} = \"{cls.name}\" "
                          f"reads `{cls.model_type}` checkpoints: {fix}.")

    # ------------------------------------------------------------------ what the encoders read

    @property
    def config(self):
        return self.model.config

    @property
    def num_prefix_tokens(self) -> int:
        """CLS and register tokens before the patches."""
        return 1 + getattr(self.config, "num_register_tokens", 0)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layers_at)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.get_submodule(self.norm_at)(x)

    def pixels(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, 3, H, W) in [0, 1] -> the backbone's input: normalised, in its dtype.

        A side that is not a multiple of the patch is one clear error: both ViTs would silently drop
        the pixels past the last whole patch.
        """
        patch = self.config.patch_size
        height, width = frames.shape[-2:]
        if height % patch or width % patch:
            raise ConfigError(f"{height} x {width} frames do not fit the {self.title} backbone's {patch}-px patches; "
                              f"choose a data.frame_size that is a multiple of {patch} (e.g. {4 * patch} or {16 * patch})")
        return normalize(frames).to(self.model.embeddings.cls_token.dtype)

    def embed(self, pixels: torch.Tensor) -> tuple[torch.Tensor, object]:
        """Pixels (N, 3, H, W) -> (tokens (N, K, D) before the first block, the position information the
        blocks read: RoPE tables, or None)."""
        raise NotImplementedError

    def rotate(self, x: torch.Tensor, position) -> torch.Tensor:
        """Per-head queries or keys (N, heads, K, head_dim) as the attention uses them (RoPE, if any)."""
        return x

    def block(self, layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None, position) -> torch.Tensor:
        """transformers' own block on tokens (N, T, D) with an additive mask (1, 1, T, T) or None."""
        raise NotImplementedError

    def qkv(self, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens (N, T, D) -> per-head queries, keys, values (N, heads, T, head_dim), before ``rotate``."""
        attention = layer.attention
        h = layer.norm1(x)                                                  # (N, T, D)
        shape = (*x.shape[:2], self.num_heads(attention), attention.head_dim)
        return tuple(proj(h).view(shape).transpose(1, 2)
                     for proj in (attention.q_proj, attention.k_proj, attention.v_proj))

    def num_heads(self, attention: nn.Module) -> int:
        raise NotImplementedError

    def dropout(self, attention: nn.Module) -> float:
        """The attention-dropout probability in force (0 in both presets; only ever active in training)."""
        raise NotImplementedError


class DINOv3(ViT):
    name, title, model_type = "dinov3", "DINOv3", "dinov3_vit"
    model_class, config_class = "DINOv3ViTModel", "DINOv3ViTConfig"
    sizes = {
        # debug size for tests and the quick start: 64 px frames give 8x8 = 64 patches
        "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     num_register_tokens=4, patch_size=8, image_size=64),
        # facebook/dinov3-vits16-pretrain-lvd1689m's architecture
        "vits16": dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                       num_register_tokens=4, patch_size=16, image_size=224),
    }
    default_size = "vits16"
    layers_at, norm_at = "model.layer", "norm"

    def embed(self, pixels):
        return self.model.embeddings(pixels), self.model.rope_embeddings(pixels)   # (N, K, D), (P, head_dim) x 2

    def rotate(self, x, position):
        """RoPE on the patch tokens (the last P) of x; CLS and registers unrotated."""
        cos, sin = position                                                 # (P, head_dim) each
        prefix, patches = x.split((x.shape[-2] - cos.shape[-2], cos.shape[-2]), dim=-2)
        half = patches.shape[-1] // 2
        rotated = torch.cat([-patches[..., half:], patches[..., :half]], dim=-1)
        return torch.cat([prefix, patches * cos + rotated * sin], dim=-2)

    def block(self, layer, x, mask, position):
        return layer(x, attention_mask=mask, position_embeddings=position)

    def num_heads(self, attention):
        return attention.num_heads

    def dropout(self, attention):
        return attention.dropout if attention.training else 0.0


class DINOv2(ViT):
    name, title, model_type = "dinov2", "DINOv2", "dinov2"
    model_class, config_class = "Dinov2Model", "Dinov2Config"
    sizes = {
        # debug size for tests: 56 px frames give 4x4 = 16 patches (larger frames interpolate the positions)
        "tiny": dict(hidden_size=32, mlp_ratio=2, num_hidden_layers=2, num_attention_heads=2,
                     patch_size=14, image_size=56),
        # facebook/dinov2-small's architecture: MLP 1536 (ratio 4), layer scale 1.0, 37x37 learned positions
        "vits14": dict(hidden_size=384, mlp_ratio=4, num_hidden_layers=12, num_attention_heads=6,
                       patch_size=14, image_size=518, layerscale_value=1.0),
    }
    default_size = "vits14"
    layers_at, norm_at = "encoder.layer", "layernorm"

    @classmethod
    def _check_model(cls, model):
        if not hasattr(model.encoder.layer[0].attention, "q_proj"):
            import transformers

            raise ConfigError(f"model.encoder.backbone = \"dinov2\" needs transformers >= 5.18 (its Dinov2 attention "
                              f"with q_proj/k_proj/v_proj/o_proj); this environment has {transformers.__version__}: "
                              f"pip install -U 'transformers>=5.18'")

    def embed(self, pixels):
        # the learned position embeddings are added here, interpolated to the frame's patch grid
        return self.model.embeddings(pixels), None                          # (N, K, D)

    def block(self, layer, x, mask, position):
        return layer(x, attention_mask=mask)

    def num_heads(self, attention):
        return attention.num_attention_heads

    def dropout(self, attention):
        return attention.attention_dropout if attention.training else 0.0


BACKBONES: dict[str, type[ViT]] = {b.name: b for b in (DINOv3, DINOv2)}


class BackboneOptions(BaseModel):
    """Options every ViT-based built-in encoder takes."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    backbone: Literal["dinov3", "dinov2"] = "dinov3"
    """The ViT: ``dinov3`` (SPEC) or ``dinov2`` (what fVLM trained; 14-px patches: frame_size a multiple of 14)."""
    pretrained: str | None = None
    """Hub id or local directory of a ``backbone`` checkpoint (SPEC: facebook/dinov3-vits16-pretrain-lvd1689m;
    DINOv2: facebook/dinov2-small); unset: random init at ``size``."""
    size: str | None = Field(None, validate_default=True)
    """Architecture for random init when ``pretrained`` is unset: ``tiny`` (debug) or the backbone's ViT-S,
    the default (``vits16`` for dinov3, ``vits14`` for dinov2)."""
    trainable: bool = True
    """Train the backbone (SPEC: true). The query projections always train."""
    activation_checkpointing: bool = False
    """Keep only each block's input for backward and run the block again there (non-reentrant
    ``torch.utils.checkpoint``): less activation memory for about one more forward of the encoder."""

    @field_validator("size")
    @classmethod
    def _a_size_of_the_backbone(cls, size: str | None, info: ValidationInfo) -> str | None:
        if "backbone" not in info.data:             # an invalid backbone: its own error says so
            return size
        backbone = BACKBONES[info.data["backbone"]]
        if size is None:
            return backbone.default_size
        if size not in backbone.sizes:
            raise ValueError(f"not a {backbone.name} size: choose one of {', '.join(backbone.sizes)}")
        return size


def load_backbone(options: BackboneOptions, key: str = "model.encoder.pretrained") -> nn.Module:
    """The transformers model ``options`` name: pretrained, or random at ``options.size``; with
    ``activation_checkpointing``, its blocks checkpointed when the model runs them (``posthoc``, the reference
    ``masked_forward``; ``deep`` runs the blocks' parts itself and checkpoints them its own way)."""
    model = BACKBONES[options.backbone].load(options, key)
    if options.activation_checkpointing:
        from fovea.core.compile import enable_activation_checkpointing

        enable_activation_checkpointing(model)
    return model


def compile_layers(model: nn.Module, backbone: str, **options) -> None:
    """``torch.compile`` each block of a backbone model in place (names unchanged; ``[training] compile``)."""
    for layer in BACKBONES[backbone](model).layers:
        layer.compile(**options)


class BackboneEncoder(nn.Module):
    """What every built-in encoder shares: the ViT backbone its options name, its width ``dim``, its
    ``num_prefix_tokens`` (CLS and registers), its adapter ``vit`` and ``backbone_config`` (optional
    extensions of the encoder contract, ``fovea.core.contracts.Encoder``)."""

    def __init__(self, config: BackboneOptions):
        super().__init__()
        self.config = config
        self.backbone = load_backbone(config)
        self.dim = self.backbone.config.hidden_size
        self.num_prefix_tokens = self.vit.num_prefix_tokens                # CLS + registers

    @property
    def vit(self) -> ViT:
        """The backbone seen through its adapter (the per-layer operations that differ between ViTs)."""
        return BACKBONES[self.config.backbone](self.backbone)

    @property
    def backbone_config(self):
        """The backbone's transformers config (what the audit's architecture check and the memory model read)."""
        return self.backbone.config
