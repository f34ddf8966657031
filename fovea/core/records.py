"""The records a run directory holds, typed: one ``metrics.jsonl`` row of training or held-out figures, and
``summary.json``. The trainer writes them and every reader (``RunDir.read_metrics``/``read_summary``, the
audit, ``fovea compare``, the CLI) reads the same keys. ``profile.json`` has its own pydantic model.

They are ``TypedDict``s, not classes: the files stay plain JSON a researcher can read with ``jq``, rows carry
extra per-objective keys (``<objective>_fine``, ``baseline_<name>``), and ``None`` marks a figure that could
not be computed (a skipped interval, no baseline).
"""

from __future__ import annotations

from typing import Optional, TypedDict

from typing_extensions import Required   # typing's from 3.11; pydantic depends on typing_extensions


class MetricsRow(TypedDict, total=False):
    """One line of ``metrics.jsonl``: a training interval (no ``split``, or ``"train"``), or a held-out
    evaluation (``"split": "val"``). Extra keys: each objective's ``<name>_coarse``/``<name>_fine`` and,
    on held-out rows, ``baseline_<name>`` and ``<objective>_<figure>``."""

    step: Required[int]
    split: str                          # "val" on held-out rows; absent on training rows
    loss: Optional[float]               # weighted over the objectives (training rows)
    loss_fine: Optional[float]          # pass 2 (dynamic queries)
    loss_coarse: Optional[float]        # pass 1 (static query)
    ratio: Optional[float]              # loss_coarse / loss_fine
    grad_norm: Optional[float]
    lr: float
    samples_per_s: float
    data_wait_share: float              # share of the interval spent waiting for batches
    skipped_steps: int                  # non-finite steps skipped in the interval
    elapsed_s: float
    entropy_static: Optional[float]     # attention statistics (core.attention.STAT_KEYS)
    entropy_dynamic: Optional[float]
    peak_static: Optional[float]
    peak_dynamic: Optional[float]
    clips: int                          # held-out rows: clips evaluated
    improvement: Optional[float]        # held-out rows: (coarse - fine) / coarse of the primary objective
    skill: Optional[float]              # held-out rows: 1 - fine / best trivial baseline
    eval_s: float                       # held-out rows: seconds spent evaluating


class ObjectiveSummary(TypedDict):
    """One objective's last logged training losses."""

    weight: float
    coarse: Optional[float]
    fine: Optional[float]
    improvement: Optional[float]


class Summary(TypedDict):
    """``summary.json``, written when a run finishes (its absence means unfinished)."""

    status: str                         # "completed"
    steps: int
    skipped_steps: int
    wall_time_s: float
    first: Optional[MetricsRow]         # the first and last training rows
    last: Optional[MetricsRow]
    improvement: Optional[float]        # SPEC: (loss_coarse - loss_fine) / loss_coarse, on training batches
    objectives: dict[str, ObjectiveSummary]
    val: Optional[MetricsRow]           # the held-out evaluation at the last step
    num_clips: int                      # training clips
    world_size: int
    global_batch_size: int              # batch_size x grad_accum x world_size
    epochs: float
    parameters: dict[str, int]          # total, trainable and per top-level module
