"""``next_latent``: predict frame t's VAE latent from frames < t (SPEC.md phase 1), MSE.

The FiLM head (``model.head``) reads the state before frame t and the latent of frame t-1
(``z_vae_init`` for frame 1) and predicts the full latent of frame t.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict

from fovea.core.hookspecs import hookimpl
from fovea.core.contracts import PassStates, Term


class NextLatent:
    """The next frame's VAE latent, mean squared error (SPEC phase 1)."""

    reads = ("head.", "z_vae_init")   # parameters only this objective reads (idle, and frozen, without it)

    class Config(BaseModel):
        """``next_latent`` has no options beyond its weight."""

        model_config = ConfigDict(extra="forbid")

    def __init__(self, config: Config, *, model_config=None):
        self.config = config

    def prepare(self, batch, codec) -> dict[str, torch.Tensor]:
        return {}   # the latents are the model's own input

    def suffix(self, model, targets) -> None:
        return None

    def loss(self, model, states: PassStates, latents: torch.Tensor, targets) -> Term:
        """Per clip: the MSE over frames and latent elements; detail ``pred`` (B, T, C, h, w), ``per_frame`` (B, T)."""
        pred = model.predict_latents(states.before_frames, model.previous_latents(latents))  # (B, T, C, h, w)
        per_frame = (pred.float() - latents.float()).square().mean(dim=(2, 3, 4))          # (B, T)
        return Term(per_frame.mean(dim=1), {"pred": pred, "per_frame": per_frame})

    def baselines(self, train, batch_size: int, codec) -> dict:
        """Trivial predictions to beat, fitted on the training clips ``train``: per-frame losses (B, T) each."""
        from fovea.core.evaluation import baseline_predictions, mean_latent, per_frame_mse

        mean = mean_latent(train, batch_size)                                              # (C, h, w)

        def baseline(name: str):
            return lambda latents, targets: per_frame_mse(baseline_predictions(latents, mean)[name], latents)

        return {name: baseline(name) for name in ("mean_latent", "copy_previous")}


@hookimpl
def fovea_register_objectives(register):
    register("next_latent", NextLatent)
