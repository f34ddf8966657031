"""``profile.json``: the typed record ``fovea profile`` writes and the audit reads (through ``RunDir``).

The fields, their order and their values are those of the file on disk: ``ProfileReport.model_dump()``
is the JSON object written (``ranks`` and ``slowest_rank`` only under torchrun, with more than one process).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_serializer

# What one step is made of; they add up to the step time up to the loop's own overhead ("unaccounted").
PHASES = ("data_wait", "encode", "attend_pass1", "attend_pass2", "llm", "head", "forward_other",
          "backward", "optimizer")

Number = int | float   # nvitop reports utilisation in whole percent: a mean of whole numbers stays one


class Record(BaseModel):
    """A part of ``profile.json``: a key the profiler does not write is a mistake, not a silent extra."""

    model_config = ConfigDict(extra="forbid")


class Stats(Record):
    """Seconds over the measured steps."""

    median: float
    p90: float
    mean: float


class Batch(Record):
    batch_size: int
    grad_accum: int
    world_size: int
    global_batch: int                   # clips per optimizer step over all processes
    num_frames: int
    frame_size: int
    dtype: str
    num_workers: int


class Execution(Record):
    compile: bool
    compile_backend: str | None         # None when not compiled
    activation_checkpointing: dict[str, bool]   # component -> on


class Flops(Record):
    per_step: float
    per_second: float
    bf16_peak_per_second: float | None  # None: no GPU, or one whose peak is not known
    mfu: float | None


class MemoryModel(Record):
    """The profiler's estimate of one process's training memory, GB by part."""

    parameters_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    activations_encoder_gb: float
    activations_llm_gb: float
    activations_per_clip_gb: float
    total_gb: float


class MeasuredMemory(Record):
    peak_allocated_gb: float
    peak_reserved_gb: float
    device_total_gb: float


class Memory(Record):
    model: MemoryModel
    sharded_over: int                   # processes FSDP2 splits weights, gradients and optimizer state over
    spec_estimate_gb: tuple[float, float]
    activations_saved_gb: float         # measured on one micro-batch
    measured: MeasuredMemory | None     # None without a GPU
    activations_saved_by_part_gb: dict[str, float]
    largest_batch_that_fits: int | None  # the OOM probe's answer (a single GPU process only)


class GpuUse(Record):
    index: int
    name: str
    util_percent_mean: Number | None
    util_percent_max: Number | None
    memory_used_max_gb: float | None
    memory_total_gb: float
    process_memory_max_gb: float | None


class Resources(Record):
    samples: int
    cpu_percent_per_core: list[float]
    cpu_percent_mean: float | None
    gpu: list[GpuUse] | None            # None on a machine with no NVIDIA GPU


class RankFigures(Record):
    """One rank's headline figures, gathered on rank 0 under torchrun."""

    rank: int
    device: str
    step_s_median: float
    step_s_p90: float
    data_wait_share: float
    phases_median_s: dict[str, float]
    peak_memory_gb: float | None
    gpu_util_mean: Number | None


class Finding(Record):
    kind: str
    severity: Literal["ok", "info", "warn"]
    message: str


class ProfileReport(Record):
    """Everything ``fovea profile`` measured on one process (rank 0's, with every rank's headline figures)."""

    config: str                         # run.name
    device: str                         # the GPU's name, or "cpu"
    steps: int
    warmup: int
    batch: Batch
    execution: Execution
    step_s: Stats
    phases_s: dict[str, Stats]          # by phase, in ``PHASES`` order
    phase_share: dict[str, float]       # of the measured time
    unaccounted_share: float
    data_wait_share: float
    samples_per_s: float
    frames_per_s: float
    flops: Flops
    memory: Memory
    resources: Resources
    gpu_util_mean: Number | None        # percent; None without a GPU
    peak_memory_gb: float | None        # allocated; None without a GPU
    per_step: list[dict[str, float]]    # step_s and each phase's seconds, per measured step
    world_size: int
    ranks: list[RankFigures] | None = None
    slowest_rank: int | None = None
    diagnosis: list[Finding] = []

    @model_serializer(mode="wrap")
    def _single_process_has_no_ranks(self, handler):
        data = handler(self)
        for key in ("ranks", "slowest_rank"):
            if data.get(key) is None:
                data.pop(key, None)
        return data
