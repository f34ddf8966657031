"""The contracts of the plugin kinds, as ``typing.Protocol`` classes, and the records they name.

One Protocol per part kind (``Encoder``, ``Head``, ``ClipSource``, ``Objective``, ``Tracker``) and what
their methods are handed (``PassStates``, ``Term``, ``Session``). A class missing a method of its kind's
contract is refused when it registers, with one line naming the plugin and the methods
(``fovea.core.plugins``); attributes an instance sets in ``__init__`` (an encoder's ``dim``) are checked
when the part is built. Optional, documented extensions are not part of a contract: a probe that needs
one and does not find it is reported as "not measured" by the audit.

Layering (each module imports only the ones above it, never one below):

- ``errors``, ``hookspecs``, ``contracts``: what a plugin is written against; no other fovea import.
- ``plugins``: the registry; checks every part against its contract here.
- ``objectives``, ``trackers``, ``data``: build the parts a config names, through ``plugins``.

A plugin imports its records from here (``PassStates``, ``Term``, ``Session``); the older places
``fovea.core.objectives`` and ``fovea.core.trackers`` still hand out the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


# --- vision: encoders, heads and clip sources -------------------------------------------------------

@runtime_checkable
class Encoder(Protocol):
    """``cls(config)``; ``dim``; ``encode`` once per frame, ``attend`` once per pass.

    ``attend`` may give K > 1 tokens per frame, ``(N, K, D)``: the LLM then reads frame t's K tokens one after
    the other, and frame t is predicted from the state before its first token.

    Optional extensions: ``uses_query = False`` (a query-free encoder: the model runs one pass, whose coarse
    is its fine), ``num_prefix_tokens`` (CLS/register columns before the patches in the attention rows: the
    audit's attention statistics over the image, ``fovea viz``'s heatmaps), ``masked_forward`` (the reference
    the audit compares a cached query pass with), ``backbone_config`` (the backbone's transformers config:
    the audit's architecture check, the memory model), ``query_input_proj``/``query_output_proj``,
    ``compile_blocks(**torch_compile_options)`` (``[training] compile``: compile what runs per block) and an
    ``activation_checkpointing`` option in its ``Config`` (``[model.encoder] activation_checkpointing``).
    """

    dim: int

    def encode(self, frames: torch.Tensor) -> Any:
        """Frames (N, 3, H, W) float in [0, 1] -> an opaque per-frame cache."""

    def attend(self, queries: torch.Tensor, cache: Any, return_attention: bool = False):
        """Queries (N, dim), row i reading frame i -> features (N, dim) or (N, K, dim) [, attention (N, num_tokens)]."""


@runtime_checkable
class Head(Protocol):
    """``cls(config, hidden_size=H, latent_channels=C)``."""

    def forward(self, hidden: torch.Tensor, prev_latent: torch.Tensor) -> torch.Tensor:
        """Hidden (N, H) and the previous latent (N, C, h, w) -> the predicted latent (N, C, h, w)."""


@runtime_checkable
class ClipSource(Protocol):
    """``cls(config, num_frames=T, frame_size=S, seed=...)``: a map-style collection of ``fovea.core.data.Clip``."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int): ...


# --- objectives ----------------------------------------------------------------------------------
#
# Both passes of the model run the LLM over one sequence ``[prompt (P), mode token, z_1 … z_T, suffix (L)]``
# (SPEC.md: ``[text?, coarse_token, z°_1 … z°_T]``; the suffix is what objectives append after the frames,
# e.g. a caption's tokens). An objective scores one pass from its hidden states (``PassStates``) and is
# evaluated on both: its ``coarse`` term from pass 1, its ``fine`` term from pass 2.

@dataclass
class PassStates:
    """One pass's LLM hidden states over ``[prompt (P), mode, z_1 … z_T, suffix (L)]``, (B, P + 1 + T·K + L, H),
    where frame t gives K tokens ``z_t = z_t^1 … z_t^K`` (K = 1 for the foveated encoders)."""

    hidden: torch.Tensor
    prompt_len: int          # P
    num_frames: int          # T
    tokens_per_frame: int = 1    # K

    @property
    def before_frames(self) -> torch.Tensor:
        """(B, T, H): the state just before each frame's first token (the mode token, then the last token of
        frame t-1); entry t has seen only frames < t."""
        P, T, K = self.prompt_len, self.num_frames, self.tokens_per_frame
        return self.hidden[:, P:P + T * K:K]

    @property
    def after_frames(self) -> torch.Tensor:
        """(B, T, H): the state after each frame's last token (where the queries come from)."""
        P, T, K = self.prompt_len, self.num_frames, self.tokens_per_frame
        return self.hidden[:, P + K:P + T * K + 1:K]

    @property
    def text(self) -> torch.Tensor:
        """(B, 1 + L, H): the states at ``[last token of frame T, suffix_1 … suffix_L]``; entry i predicts suffix
        token i + 1."""
        return self.hidden[:, self.prompt_len + self.num_frames * self.tokens_per_frame:]


@dataclass
class Term:
    """An objective's loss on one pass: per clip (the training loss is their mean), and what else it made."""

    per_clip: torch.Tensor                                      # (B,) float32
    detail: dict[str, torch.Tensor] = field(default_factory=dict)   # e.g. "pred", "per_frame", "tokens"

    @property
    def mean(self) -> torch.Tensor:
        return self.per_clip.mean()


@runtime_checkable
class Objective(Protocol):
    """The contract of an ``objective`` part, built as ``cls(config, model_config=FoveaConfig.model)``.

    Optional extensions: a class attribute ``needs_captions = True`` makes training and evaluation use
    only clips that carry a caption (the others are listed in the run's data report); ``reads``, the
    prefixes of the model's parameters only this objective reads (without it they are idle: frozen, and
    the audit says so); ``baselines(train_clips, batch_size, codec)``, trivial predictors ``fovea eval``
    compares with (``fovea.core.evaluation``).
    """

    Config: ClassVar[type]

    def prepare(self, batch: dict[str, Any], codec) -> dict[str, torch.Tensor]:
        """The tensors this objective reads, from a training batch (``fovea.core.loader``; CPU; e.g. caption token ids)."""

    def suffix(self, model, targets: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Embeddings (B, L, H) the LLM reads after the frames in both passes, or None."""

    def loss(self, model, states: PassStates, latents: torch.Tensor, targets: dict[str, torch.Tensor]) -> Term:
        """This pass's loss per clip; ``latents`` (B, T, C, h, w) are the frames' VAE latents."""


# --- experiment trackers (what each one shows: ``fovea.core.trackers``) ------------------------------

@dataclass(frozen=True)
class Session:
    """What a tracker is told when it starts."""

    run_path: Path                  # the run directory
    files: Path                     # where the tracker keeps local files: ``RunDir.tracker_dir(name)``
    run_name: str                   # the run directory's name: the tracker run's display name
    params: dict[str, Any]          # the resolved config, flattened (``flat_params``)
    record: dict[str, Any] | None   # what this tracker's ``start`` returned for this run before (its id), or None
    resume_step: int | None = None  # training continues after this checkpoint step; rows after it come again
    purpose: str = "train"          # "train", or "report": ``fovea audit``/``fovea viz`` adding to the run


@runtime_checkable
class Tracker(Protocol):
    """The contract of a ``tracker`` part, built as ``cls(config)`` with its ``[trackers.NAME]`` options.

    Every method may raise: at ``start`` it stops the run before training (one ``error:`` line), later it
    turns the tracker off with one warning.
    """

    Config: ClassVar[type]

    @classmethod
    def require(cls, config) -> None:
        """Raise ``FoveaError`` saying what to install when the tracker's library is missing (cheap: no network)."""

    def start(self, session: Session) -> dict[str, Any]:
        """Open the tracker's run, or continue ``session.record``'s; returns the record to keep (JSON)."""

    def log_metrics(self, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row: ``step``, ``split`` (absent: ``"train"``) and numbers (or None).

        A resumed run first hands over again the rows ``metrics.jsonl`` kept (up to its checkpoint), then the new
        ones: log only rows at steps the tracker's run does not hold yet (a killed process may have lost what its
        tracker had not flushed; a resumed one may get rows it already has)."""

    def log_summary(self, values: dict[str, Any], step: int) -> None:
        """Final values (numbers or strings) under dotted keys (``summary/…``, ``audit/…``); ``step``: the run's last."""

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """PNG files by name (``viz/losses``), made after training; ``step``: the run's last."""

    def finish(self, status: str) -> None:
        """Close the tracker's run: ``status`` is ``finished``, ``interrupted`` or ``failed``."""


CONTRACTS: dict[str, type] = {"encoder": Encoder, "head": Head, "source": ClipSource, "objective": Objective,
                              "tracker": Tracker}
"""kind -> the Protocol a part of that kind keeps."""
