"""Held-out evaluation: did the model learn, and did foveation help?

Every figure comes from clips the run never trained on (``fovea.core.split``), per clip, so that it has
a 95 % bootstrap interval over clips, and stands next to the trivial baselines it must beat. Each
objective the run trains is evaluated on its own:

- modes: ``coarse`` (pass 1 alone: the static query), ``fine`` (the two-pass model as trained) and
  ``autoregressive`` (one pass, frame t read with the query the model made after frame t-1 in that same
  pass, as a deployed model runs: ``FoveatedVLM.autoregressive``);
- baselines, from the objective (its optional ``baselines``), fitted on the first ``eval.baseline_clips``
  training clips: ``next_latent``'s ``mean_latent`` (the mean latent for every frame) and
  ``copy_previous`` (frame t-1's latent; the mean for frame 1); ``caption``'s ``unigram`` and ``bigram``
  (token models of the training captions: they never see the frames);
- ``skill = 1 - loss_fine / best baseline``; ``improvement = (coarse - fine) / coarse`` (SPEC.md's
  metric); ``autoregressive_gap = (autoregressive - fine) / fine`` (the train/inference gap).

Losses are per clip as the training loss: ``next_latent``'s MSE (mean over frames and latent elements),
``caption``'s cross-entropy (mean over the caption's tokens). ``fovea eval`` (``evaluate_run``) writes
``eval.json`` (every objective under ``objectives``; the primary one, ``next_latent`` when trained, also
at the top level); training logs ``Evaluator`` rows with ``"split": "val"`` in ``metrics.jsonl`` every
``eval.every`` steps.

One module per job: ``baselines`` (fitted on training clips), ``losses`` (per clip, every mode),
``statistics`` (bootstrap intervals, skill, improvement), ``ablations``, ``evaluator`` (during
training), ``trained_run`` (a run opened for reading), ``flops``, ``report`` (``eval.md``) and ``run``
(`fovea eval`). The names other modules use are importable from the package itself."""

from fovea.core.evaluation.ablations import ABLATIONS, ablated
from fovea.core.evaluation.baselines import BASELINES, baseline_predictions, mean_latent, per_frame_mse
from fovea.core.evaluation.evaluator import Evaluator
from fovea.core.evaluation.losses import MODES, clip_losses
from fovea.core.evaluation.report import UNITS, ablation_lines, headline, objective_results, rows
from fovea.core.evaluation.run import evaluate_run
from fovea.core.evaluation.statistics import bootstrap_draws, mean_ci, summarize_objective
from fovea.core.evaluation.trained_run import TrainedRun

__all__ = ["ABLATIONS", "BASELINES", "MODES", "UNITS", "Evaluator", "TrainedRun", "ablated", "ablation_lines",
           "baseline_predictions", "bootstrap_draws", "clip_losses", "evaluate_run", "headline", "mean_ci",
           "mean_latent", "objective_results", "per_frame_mse", "rows", "summarize_objective"]
