"""``mlflow``: the run in an MLflow tracking store (``pip install 'fovea[mlflow]'``): local or a server.

The store is ``[trackers.mlflow] tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's default
(``sqlite:///mlflow.db`` in the working directory); a local ``file:`` directory or a SQLite file needs no
server (``mlflow ui --backend-store-uri sqlite:///mlflow.db``). The run's config goes in as params (dotted keys),
every metrics row as metrics at its step (``train/<key>``, ``val/<key>``), the summary and the audit counts as
metrics at the last step (text as tags), and the ``fovea viz`` figures as artifacts under ``viz/``.

**On resume** the same MLflow run continues (its id and store are kept in ``trackers.json``, so a resume from
another working directory finds it). MLflow keeps every value logged at a step (a metric's history is
append-only) and has no call that removes one, so fovea logs again only the rows after the last step the run
holds, per split: **each step once; for the steps between the checkpoint and the crash MLflow keeps the first
process's values** — the same numbers on CPU, where resume is bit-exact; ``metrics.jsonl`` has the resumed ones.
A config value changed on resume (``--set training.max_steps=…``) cannot change an MLflow param: the new value
goes into the tag ``changed_on_resume.<key>``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from fovea.core.hookspecs import hookimpl
from fovea.core.contracts import Session
from fovea.core.trackers import numbers, require_package

STATUSES = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}
PARAMS_PER_CALL = 100     # MLflow's limit on params in one log_batch
METRICS_PER_CALL = 1000   # and on metrics


class MLflowTracker:
    """MLflow: params, metrics at fovea's steps, summary, figures as artifacts; resumes the same MLflow run."""

    class Config(BaseModel):
        """Options of the ``mlflow`` tracker."""

        model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

        tracking_uri: str | None = None
        """The tracking store: ``sqlite:///path/mlflow.db``, ``file:/path/mlruns`` or a server's URL; unset:
        ``MLFLOW_TRACKING_URI``, else MLflow's default (``sqlite:///mlflow.db`` in the working directory)."""
        experiment: str = "fovea"
        """The MLflow experiment the run goes into (made when missing)."""

    def __init__(self, config: Config):
        self.config = config
        self.client = None
        self.run_id = ""
        self.held: dict[str, int] = {}     # split -> the last step the MLflow run holds

    @classmethod
    def require(cls, config: Config) -> None:
        require_package("mlflow")

    def start(self, session: Session) -> dict[str, Any]:
        import mlflow
        from mlflow import MlflowClient
        from mlflow.entities import Param

        record = session.record or {}
        uri = record.get("tracking_uri") or absolute_uri(self.config.tracking_uri or mlflow.get_tracking_uri())
        self.client = client = MlflowClient(tracking_uri=uri)
        if "run_id" in record:
            self.run_id = record["run_id"]
            run = client.get_run(self.run_id)          # an error when the store lost it
            client.update_run(self.run_id, status="RUNNING")
            self.held = {split: self._last_step(run, split) for split in ("train", "val")}
            if session.purpose == "train":
                logged = run.data.params
                new = [Param(k, str(v)) for k, v in session.params.items() if k not in logged]
                for start in range(0, len(new), PARAMS_PER_CALL):
                    client.log_batch(self.run_id, params=new[start:start + PARAMS_PER_CALL])
                for key, value in session.params.items():
                    if key in logged and logged[key] != str(value):
                        client.set_tag(self.run_id, f"changed_on_resume.{key}", str(value))
        else:
            experiment = client.get_experiment_by_name(self.config.experiment)
            experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.config.experiment)
            run = client.create_run(experiment_id, run_name=session.run_name,
                                    tags={"fovea.run_dir": str(session.run_path)})
            self.run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in session.params.items()]
            for start in range(0, len(params), PARAMS_PER_CALL):
                client.log_batch(self.run_id, params=params[start:start + PARAMS_PER_CALL])
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": run.info.experiment_id}

    def _last_step(self, run, split: str) -> int:
        """The last step of ``split`` the MLflow run holds (0: none)."""
        keys = [key for key in run.data.metrics if key.startswith(f"{split}/")]
        return max((m.step for key in keys for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def log_metrics(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, split = row["step"], row.get("split", "train")
        if step <= self.held.get(split, 0):   # the MLflow run holds this step already (logged before the resume)
            return
        now = int(time.time() * 1000)
        metrics = [Metric(f"{split}/{key}", value, now, step) for key, value in numbers(row).items()]
        for start in range(0, len(metrics), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + METRICS_PER_CALL])

    def log_summary(self, values: dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items() if not isinstance(value, str)]
        tags = [RunTag(key, value[:5000]) for key, value in values.items() if isinstance(value, str)]
        for start in range(0, max(len(metrics), len(tags)), METRICS_PER_CALL):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + METRICS_PER_CALL],
                                  tags=tags[start:start + METRICS_PER_CALL])

    def log_images(self, images: dict[str, Path], step: int) -> None:
        for name, path in images.items():
            self.client.log_artifact(self.run_id, str(path), artifact_path=str(Path(name).parent))

    def finish(self, status: str) -> None:
        if self.client is not None and self.run_id:
            self.client.set_terminated(self.run_id, STATUSES.get(status, "FAILED"))


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative local path made absolute (``sqlite:///mlflow.db``, ``file:mlruns``, a bare path),
    so a resume from another working directory reaches the same store; other URIs as they are."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri[len("file:"):]).resolve().as_uri()
    if "://" not in uri and not uri.startswith("file:"):
        return Path(uri).resolve().as_uri()
    return uri


@hookimpl
def fovea_register_trackers(register):
    register("mlflow", MLflowTracker)
