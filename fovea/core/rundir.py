"""The run directory: everything a run writes, and everything ``audit``/``profile``/``viz`` read back.

Layout of ``<output_dir>/<timestamp>-<name>/``: ``config.toml`` (resolved), ``env.json``,
``metrics.jsonl``, ``checkpoints/step-NNNNNN/`` (the newest ``training.keep_checkpoints``; a ``step-N``
directory is always complete, see ``fovea.core.checkpoint``), ``nonfinite.jsonl`` (steps whose loss
or gradient was NaN/inf, with their clips), ``data_report.json`` (the clip cache used, the VAE of its
targets, skipped files and why), ``split.json`` (the held-out clips), ``summary.json`` (once the run
finished); ``profile.json``/``profile.md`` (``fovea profile``; ``fovea.core.profile_report`` types the
JSON), ``eval.json``/``eval.md`` (``fovea eval``), ``viz/`` (``fovea viz``'s figures) and
``audit.md``/``audit.json`` (``fovea audit``) when those ran; ``trackers.json`` (each experiment tracker's
record of its run: the id a resumed run continues) and a tracker's local files in ``<run>/<tracker>/``
(``tensorboard/``, ``wandb/``) with ``[run] trackers``. ``metrics.jsonl`` holds training rows and,
marked ``"split": "val"``, the held-out evaluations made during training (``fovea.core.records`` types
its rows and ``summary.json``).
``<output_dir>/latest`` is a relative symlink to the newest run.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from fovea.core.config import FoveaConfig, config_to_toml, read_toml
from fovea.core.errors import FoveaError
from fovea.core.files import LATEST, OwnedDir, check_latest, new_stamped_dir
from fovea.core.records import MetricsRow, Summary

if TYPE_CHECKING:
    from fovea.core.profile_report import ProfileReport

CHECKPOINT_INFO = "checkpoint.json"   # written last into a checkpoint directory
MODEL = "model.safetensors"           # a checkpoint's weights
SHARDED = "sharded"                   # ... or, for an FSDP2 run, this directory of torch.distributed.checkpoint shards
DEFAULT_OUTPUT_DIR = "runs"           # run.output_dir's default


class NoRunError(FoveaError):
    """``<output_dir>/latest`` names no run: nothing was trained there yet."""

    def __init__(self, link: Path, message: str):
        super().__init__(message)
        self.link = link


def output_dir_of(config_path: str | Path | None, overrides: Iterable[str] = ()) -> str:
    """``run.output_dir`` of a config file with ``--set`` overrides, without building the whole config when
    no file is given (a ``--set run.output_dir=...`` alone decides then)."""
    from fovea.core.config import load_config, parse_override

    overrides = list(overrides)
    if config_path is not None:
        return load_config(config_path, overrides).run.output_dir
    given = [value for keys, value in map(parse_override, overrides) if keys == ["run", "output_dir"]]
    return str(given[-1]) if given else DEFAULT_OUTPUT_DIR


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step of a checkpoint directory ``step-NNNNNN``."""
    return int(checkpoint.name[5:])


class RunDir(OwnedDir):
    """The one owner of a run directory's layout (see the module docstring)."""

    kind = "new runs"

    config_file = property(lambda self: self.path / "config.toml")
    metrics_file = property(lambda self: self.path / "metrics.jsonl")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    summary_file = property(lambda self: self.path / "summary.json")
    data_report_file = property(lambda self: self.path / "data_report.json")
    env_file = property(lambda self: self.path / "env.json")
    profile_file = property(lambda self: self.path / "profile.json")   # written by `fovea profile`
    profile_markdown_file = property(lambda self: self.path / "profile.md")   # ... and its report for people
    split_file = property(lambda self: self.path / "split.json")       # the held-out clips
    trackers_file = property(lambda self: self.path / "trackers.json") # each tracker's run id, continued on resume
    viz_dir = property(lambda self: self.path / "viz")                 # `fovea viz`'s figures
    audit_file = property(lambda self: self.path / "audit.json")       # `fovea audit`'s findings ...
    audit_markdown_file = property(lambda self: self.path / "audit.md")    # ... and its report for people
    nonfinite_file = property(lambda self: self.path / "nonfinite.jsonl")  # steps with a NaN/inf loss or gradient

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` holds a run (its ``config.toml``)."""
        return (Path(path) / "config.toml").is_file()

    def tracker_dir(self, name: str) -> Path:
        """Where the tracker ``name`` keeps its local files (``tensorboard/``, ``wandb/``)."""
        return self.path / name

    def read_trackers(self) -> dict[str, dict[str, Any]]:
        """``trackers.json``: tracker name -> the record its ``start`` returned (``{}`` before any tracker ran)."""
        return self.read_json(self.trackers_file) or {}

    def write_trackers(self, records: dict[str, dict[str, Any]]) -> None:
        """Keep the trackers' records (merged into the ones already kept), atomically."""
        self.write_json(self.trackers_file.name, {**self.read_trackers(), **records})

    def eval_file(self, split: str = "val") -> Path:
        """``eval.json`` (held-out clips) or ``eval-train.json``, written by `fovea eval` (with ``.md`` beside)."""
        return self.path / ("eval.json" if split == "val" else f"eval-{split}.json")

    @classmethod
    def create(cls, config: FoveaConfig) -> "RunDir":
        """A new run directory holding the resolved config and environment (``latest`` is not moved yet)."""
        root = Path(config.run.output_dir)
        check_latest(root, cls.kind)
        path = new_stamped_dir(root, config.run.name, "run directory", "run.output_dir")
        run = cls(path)
        run.config_file.write_text(config_to_toml(config), encoding="utf-8")
        run.write_json(run.env_file.name, collect_environment())
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (``runs/latest`` works); an error says what is missing."""
        resolved = Path(path).resolve()
        if not resolved.is_dir():
            raise FoveaError(f"no run directory at {path}; train one first with `fovea run CONFIG`")
        if not cls.is_run(resolved):
            raise FoveaError(f"{path} is not a fovea run directory (no config.toml in it)")
        return cls(resolved)

    @classmethod
    def latest(cls, output_dir: str | Path = DEFAULT_OUTPUT_DIR) -> "RunDir":
        """The newest run under ``output_dir`` (what ``<output_dir>/latest`` points at)."""
        link = Path(output_dir) / LATEST
        if not link.exists():
            raise NoRunError(link, f"no run to read: {link} does not exist (no run was trained into {output_dir}); "
                             f"train one with `fovea run CONFIG`, or name the run directory")
        return cls.open(link)

    @classmethod
    def resolve(cls, target: str | Path, config_path: str | Path | None = None,
                overrides: Iterable[str] = ()) -> "RunDir":
        """The run a command names: a run directory, or ``latest`` -- the newest run under ``run.output_dir``
        of ``config_path`` (when given) with the ``--set`` overrides, else under ``runs/``."""
        if str(target) != LATEST:
            return cls.open(target)
        return cls.latest(output_dir_of(config_path, overrides))

    def checkpoints(self) -> list[Path]:
        """The complete checkpoint directories, oldest first."""
        found = [(int(p.name[5:]), p) for p in self.checkpoints_dir.glob("step-*")
                 if p.name[5:].isdigit() and (p / CHECKPOINT_INFO).is_file()]
        return [path for _, path in sorted(found)]

    @property
    def latest_checkpoint(self) -> Path:
        """The newest complete checkpoint directory; an error if the run saved none."""
        checkpoints = self.checkpoints()
        if not checkpoints:
            raise FoveaError(f"{self.path} holds no complete checkpoint (nothing in {self.checkpoints_dir.name}/): "
                             f"the run stopped before its first save (training.save_every); start it again")
        return checkpoints[-1]

    def checkpoint_at(self, step: int) -> Path:
        """The complete checkpoint directory of optimizer step ``step``; an error lists the ones kept."""
        found = self.checkpoints_dir / checkpoint_name(step)
        if found not in self.checkpoints():
            kept = ", ".join(str(checkpoint_step(p)) for p in self.checkpoints()) or "none"
            raise FoveaError(f"{self.path} has no complete checkpoint of step {step} (kept: {kept})")
        return found

    @property
    def checkpoint_file(self) -> Path:
        """The weights of the newest complete checkpoint: its ``model.safetensors``, or the ``sharded/``
        directory of an FSDP run (of a run from before checkpoints/: its root ``model.safetensors``)."""
        legacy = self.path / MODEL
        if legacy.is_file() and not self.checkpoints():
            return legacy
        return self.weights_file(self.latest_checkpoint)

    @staticmethod
    def weights_file(checkpoint: Path) -> Path:
        """The weights in a checkpoint directory: ``model.safetensors``, or ``sharded/`` (FSDP2)."""
        return checkpoint / SHARDED if (checkpoint / SHARDED).is_dir() else checkpoint / MODEL

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process: a second trainer of the same run (two --resume) is refused.

        An advisory ``flock`` on ``.lock``: the kernel releases it when the process dies, even by SIGKILL.
        """
        import fcntl

        with open(self.path / ".lock", "a", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise FoveaError(f"{self.path} is being trained by another process; wait for it to finish "
                                 f"or stop it first") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def write_json(self, name: str, data: Any) -> None:
        """Write ``name`` atomically: readers see the old file or the new one, never half of one."""
        self.write_text(name, json.dumps(data, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """Write the text file ``name`` atomically (``audit.md``, ``profile.md``)."""
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.path / name)

    def read_json(self, path: Path, required: bool = False, missing: str = "") -> dict[str, Any] | None:
        """A JSON object file of the run; ``None`` if absent and optional; a ``FoveaError`` if corrupt."""
        if not path.is_file():
            if required:
                raise FoveaError(f"{path}: missing; {missing}")
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FoveaError(f"{path}: not valid JSON ({exc}); the file is corrupt: restore it, or delete it "
                             f"if it is optional (profile.json, eval.json, data_report.json, env.json)") from None
        if not isinstance(data, dict):
            raise FoveaError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data

    def write_profile(self, report: ProfileReport, markdown: str | None = None) -> None:
        """``profile.json`` (and ``profile.md``, the same figures for people, when given), atomically."""
        self.write_json(self.profile_file.name, report.model_dump())
        if markdown is not None:
            self.write_text(self.profile_markdown_file.name, markdown)

    def read_profile(self) -> ProfileReport | None:
        """``profile.json`` as `fovea profile` wrote it; ``None`` if it never ran. A file that is not such a
        profile (corrupt, or from a fovea that wrote other figures) is a ``FoveaError`` saying what to do."""
        from pydantic import ValidationError

        from fovea.core.profile_report import ProfileReport

        if not self.profile_file.is_file():
            return None
        try:
            data = json.loads(self.profile_file.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                problem = f"expected a JSON object, got {type(data).__name__}"
            else:
                return ProfileReport.model_validate(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problem = f"not valid JSON ({exc})"
        except ValidationError as exc:
            first = exc.errors()[0]
            more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            problem = (f"not a profile this fovea can read: {'.'.join(map(str, first['loc']))}: "
                       f"{first['msg'][:1].lower()}{first['msg'][1:]}{more}")
        raise FoveaError(f"{self.profile_file}: {problem}; profile the run again with `fovea profile` (it "
                         f"rewrites the profile of runs/latest), or delete the file")

    def read_config_table(self) -> dict[str, Any]:
        """``config.toml`` as the nested table it holds (no plugin needs to be installed to read it)."""
        return read_toml(self.config_file)

    def read_summary(self) -> Summary | None:
        """``summary.json``: ``None`` while the run has not finished."""
        return self.read_json(self.summary_file)

    def read_eval(self, split: str = "val") -> dict[str, Any] | None:
        """``eval.json`` (``eval-train.json``) as `fovea eval` wrote it; ``None`` if it never ran."""
        return self.read_json(self.eval_file(split))

    def current_eval(self, modes: Iterable[str]) -> dict[str, Any] | None:
        """``eval.json`` when it is of the newest checkpoint and holds every mode in ``modes``, else ``None``
        (never evaluated, evaluated at an older checkpoint, or with fewer modes)."""
        current = self.read_eval()
        if current is None or not self.checkpoints():
            return None
        fresh = current.get("step") == checkpoint_step(self.latest_checkpoint)
        return current if fresh and set(modes) <= set(current.get("modes", {})) else None

    def holds_out_clips(self) -> bool:
        """Whether the run recorded a held-out split with at least one clip (``split.json``)."""
        split = self.read_json(self.split_file)
        return bool(split and split.get("num_val"))

    def append_metrics(self, record: MetricsRow) -> None:
        with self.metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self, split: str | None = "train") -> list[MetricsRow]:
        """The logged lines of ``split`` (``"train"``, ``"val"``, or ``None`` for all, in file order),
        checked: each a JSON object with a larger ``step`` than the one before of its split.

        A torn last line (the process was killed while appending it) is left out; any other bad line
        is a ``FoveaError`` naming it.
        """
        if not self.metrics_file.is_file():
            return []
        try:
            lines = self.metrics_file.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise FoveaError(f"{self.metrics_file} is unreadable ({exc}); restore it or start the run again") from None
        records: list[MetricsRow] = []
        last: dict[str, int] = {}   # the last step of each split
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):   # no newline after it: cut off mid-write
                    break
                record = None
            kind = record.get("split", "train") if isinstance(record, dict) else None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int) or \
                    (kind in last and record["step"] <= last[kind]):
                raise FoveaError(f"{self.metrics_file}, line {number}: not a metrics record following step "
                                 f"{last.get(kind, 0)} ({line[:80]!r}); the file is corrupt: "
                                 f"restore it or start the run again")
            last[kind] = record["step"]
            records.append(record)
        return [r for r in records if split is None or r.get("split", "train") == split]

    def rewrite_metrics(self, records: list[MetricsRow]) -> None:
        """Replace ``metrics.jsonl`` by ``records`` atomically (a resumed run drops the steps it will redo)."""
        self.write_text(self.metrics_file.name, "".join(json.dumps(record) + "\n" for record in records))


def collect_environment() -> dict[str, Any]:
    """Versions, git commit and devices: enough to say later what produced a run."""
    import platform
    import subprocess
    import sys
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    def _git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    from fovea.core import distributed

    cuda, world = torch.cuda.is_available(), distributed.current()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "argv": sys.argv,
        "packages": {name: _version(name) for name in
                     ("fovea", "torch", "transformers", "diffusers", "torchdata", "pydantic", "pluggy")},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "cpu_count": os.cpu_count(),
        "cuda": torch.version.cuda if cuda else None,
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else ["cpu"],
        "world_size": world.world_size,   # processes of the torchrun job that trained the run (1: no torchrun)
        "nodes": int(os.environ.get("WORLD_SIZE", 1)) // int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
    }
