"""``wandb``: the run in Weights & Biases (``pip install 'fovea[wandb]'``), online or offline.

W&B keeps its local files in ``<run>/wandb/``; ``WANDB_MODE=offline`` (or ``[trackers.wandb] mode =
"offline"``) writes only those, to upload later with ``wandb sync <run>/wandb/offline-run-*``. Metrics are
logged at fovea's step (``train/<key>``, ``val/<key>``), the config as the run's config, the summary and the
audit counts into the run's summary, the ``fovea viz`` figures as images after the last training step.

**On resume** the W&B run continues under the id kept in ``trackers.json`` (``resume="allow"``). W&B's
steps only go forward: a run holds each step once, and rows at a step it already holds are not taken again
(W&B drops them with a warning). So fovea leaves out the rows the run already holds and logs the rest — the
rows ``metrics.jsonl`` kept up to the checkpoint that W&B lacks (W&B's service buffers its writes, and a process
killed with SIGKILL loses what was not written: offline, often all of that process's rows), then the new ones:
**each step once; for steps W&B received before the crash it keeps the first process's values** — the same
numbers on CPU, where resume is bit-exact; on a GPU they may differ in the last digits, and ``metrics.jsonl`` has
the resumed ones. The held steps come from the server (online: the resumed run's starting step) and from the
run's earlier local segments in ``<run>/wandb/`` (offline: W&B cannot ask a server, so every process writes a
segment of the same run id; ``wandb sync`` uploads them in order, as a resumed run). ``rewind = true`` instead resumes with W&B's rewind
(``resume_from="<id>?_step=<checkpoint>"``, in preview on W&B's cloud): the history after the checkpoint
is archived and the resumed run's rows replace it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from fovea.core.hookspecs import hookimpl
from fovea.core.contracts import Session
from fovea.core.trackers import numbers, require_package

EXIT_CODES = {"finished": 0, "interrupted": 1, "failed": 1}


class WandbTracker:
    """Weights & Biases: config, metrics at fovea's steps, summary, figures; resumes the same W&B run."""

    class Config(BaseModel):
        """Options of the ``wandb`` tracker; unset ones fall back to W&B's environment variables."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        project: str | None = None
        """W&B project; unset: ``WANDB_PROJECT``, else ``fovea``."""
        entity: str | None = None
        """W&B entity (user or team); unset: ``WANDB_ENTITY``, else your default entity."""
        mode: Literal["online", "offline", "disabled"] | None = None
        """``online``, ``offline`` (local files only, ``wandb sync`` later) or ``disabled``; unset: ``WANDB_MODE``, else online."""
        tags: list[str] = []
        """Tags of the W&B run."""
        group: str | None = None
        """W&B group of the run (e.g. a sweep's name)."""
        rewind: bool = False
        """On resume, rewind the W&B run to the checkpoint (W&B's ``resume_from``, in preview on W&B's cloud) so
        the resumed run's rows replace those logged after it; off: the run keeps the rows it holds and each
        step shows once."""

    def __init__(self, config: Config):
        self.config = config
        self.run = None
        self.held = 0                      # steps at or below this are in the W&B run already

    @classmethod
    def require(cls, config: Config) -> None:
        require_package("wandb")

    def start(self, session: Session) -> dict[str, Any]:
        import wandb

        record, c = session.record or {}, self.config
        kwargs: dict[str, Any] = dict(
            project=record.get("project") or c.project or os.environ.get("WANDB_PROJECT") or "fovea",
            entity=record.get("entity") or c.entity, name=session.run_name,
            dir=str(session.files.parent),   # W&B writes into <dir>/wandb/, which is session.files
            mode=c.mode, tags=c.tags or None, group=c.group, job_type=session.purpose,
            settings=wandb.Settings(quiet=True, console="off"))
        continuing = "id" in record
        if continuing and c.rewind and session.resume_step is not None:
            # W&B keeps the history up to and including this step and continues after it
            kwargs["resume_from"] = f"{record['id']}?_step={session.resume_step}"
        elif continuing:
            kwargs.update(id=record["id"], resume="allow")
        else:
            kwargs.update(id=new_run_id(), config=session.params)
        wait_for_a_new_segment_name(session.files, kwargs.get("id") or record.get("id", ""))
        self.run = wandb.init(**kwargs)
        if continuing and session.purpose == "train":
            self.run.config.update(session.params, allow_val_change=True)   # --set on resume may change values
        if "resume_from" in kwargs:   # rewound to the checkpoint: W&B holds the steps up to it
            self.held = session.resume_step
        elif continuing:
            earlier = max((max(history_steps(f), default=0) for f in segments(session.files, self.run.id)
                           if f.parent != Path(self.run.dir).parent), default=0)
            self.held = max(earlier, self.run.starting_step - 1)
        return {"id": self.run.id, "project": self.run.project, "entity": self.run.entity,
                "mode": "offline" if self.run.offline else "online"}

    def log_metrics(self, row: dict[str, Any]) -> None:
        step = row["step"]
        if step <= self.held:   # the W&B run holds this step already (logged before the resume)
            return
        split = row.get("split", "train")
        self.run.log({f"{split}/{key}": value for key, value in numbers(row).items()}, step=step)

    def log_summary(self, values: dict[str, Any], step: int) -> None:
        self.run.summary.update(values)

    def log_images(self, images: dict[str, Path], step: int) -> None:
        import wandb

        # W&B's steps only go forward: after the run's last step (and after anything logged since).
        at = max(step + 1, self.held + 1, self.run.step)
        self.run.log({name: wandb.Image(str(path)) for name, path in images.items()}, step=at)

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        if status == "interrupted":
            self.run.mark_preempting()   # W&B shows it as preempted: it is expected to continue
        self.run.finish(exit_code=EXIT_CODES.get(status, 1))
        self.run = None


# --------------------------------------------------------------------------- W&B's local files


def wait_for_a_new_segment_name(files: Path, run_id: str) -> None:
    """W&B names a process's directory after the second it starts in (``offline-run-<YYYYMMDD_HHMMSS>-<id>``) and
    writes over one of the same name: a second start of the same run within that second (a resume or a report
    right after training, in one process) would erase the first's log. Wait for the next second."""
    import time

    while run_id and any(files.glob(f"*-{time.strftime('%Y%m%d_%H%M%S')}-{run_id}")):
        time.sleep(0.05)


def new_run_id() -> str:
    """A new W&B run id: 8 lowercase letters and digits, as W&B makes them."""
    import secrets
    import string

    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def segments(files: Path, run_id: str) -> list[Path]:
    """The transaction logs of every process that logged to the W&B run ``run_id`` from this run directory,
    oldest first: ``<run>/wandb/{run,offline-run}-<time>-<id>/run-<id>.wandb`` (``files``: ``<run>/wandb``)."""
    import re

    def started(path: Path) -> str:                     # the segment directory's YYYYMMDD_HHMMSS
        found = re.search(r"\d{8}_\d{6}", path.parent.name)
        return found.group(0) if found else ""

    return sorted(files.glob(f"*-{run_id}/run-{run_id}.wandb"), key=started)


BLOCK = 32768          # the log's block size (LevelDB's log format, which W&B's transaction log follows)
HEADER = 7             # b":W&B", a 2-byte magic and a version byte at the start; 7 bytes before each chunk too


def records(path: Path):
    """The payloads of a W&B transaction log (each a serialised ``wandb_internal_pb2.Record``), in order.

    A chunk cut off at the end (the process was killed while writing it) ends the log."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < HEADER:                       # a block's tail too short for a chunk header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        if kind == 0:                           # zero padding to the end of the block
            position += left
            continue
        chunk = data[position + HEADER:position + HEADER + length]
        if len(chunk) < length:
            return
        position += HEADER + length
        if kind == 1:                           # FULL
            yield chunk
        elif kind == 2:                         # FIRST
            pending = chunk
        elif kind == 3:                         # MIDDLE
            pending += chunk
        elif kind == 4:                         # LAST
            yield pending + chunk
            pending = b""


def history(path: Path) -> list[dict[str, Any]]:
    """The history rows a W&B transaction log holds, each ``{key: value}`` with ``_step``."""
    import json

    from wandb.proto import wandb_internal_pb2

    rows = []
    for payload in records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {}
        for item in record.history.item:
            keys = [item.key] if item.key else list(item.nested_key)   # media: {"viz/losses": {"_type": …}}
            table = row
            for key in keys[:-1]:
                table = table.setdefault(key, {})
            table[keys[-1]] = json.loads(item.value_json)
        rows.append(row)
    return rows


def history_steps(path: Path) -> list[int]:
    """The ``_step`` of every history row of a W&B transaction log."""
    return [int(row["_step"]) for row in history(path) if "_step" in row]


@hookimpl
def fovea_register_trackers(register):
    register("wandb", WandbTracker)
