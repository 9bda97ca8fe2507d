"""Experiment loggers: TensorBoard, MLflow and Weights & Biases, fed by the observer hooks.

`harness run ... loggers=tensorboard,mlflow,wandb log_dir=DIR` registers one observer plugin that
opens a logger run per harness run (`harness_run_start`), logs the training loss of every epoch
(`harness_run_progress`), and at the end (`harness_run_end`) the run's per-epoch curves (series
named `*_per_epoch`, and `train_loss` where no epoch was reported, e.g. from Ray or SLURM
workers), its final metrics, its status, and the canonical spec as the logged configuration.
Each backend is an optional extra (`pip install 'harness-bench[tensorboard]'`, `[mlflow]`,
`[wandb]`); a missing one fails the command before training with the extra to install.

Where they write (`log_dir`, default `<results>/logs`):

- TensorBoard: `DIR/tensorboard/<run_id>/events.out.tfevents.*` (`tensorboard --logdir DIR/tensorboard`);
- MLflow: the tracking URI of `$MLFLOW_TRACKING_URI`, else a local file store `DIR/mlruns`
  (`mlflow ui --backend-store-uri DIR/mlruns`); experiment `harness-<suite>`;
- W&B: project `$WANDB_PROJECT` or `harness-<suite>`, files under `DIR/wandb`; `WANDB_MODE=offline`
  logs without an account (`wandb sync` uploads later).

Loggers only observe: nothing they do changes what a run computes or stores, and they are not part
of a run's identity.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.hookspecs import hookimpl

LOGGERS = ("tensorboard", "mlflow", "wandb")
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}  # import name of each backend's package
EXTRAS = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_available(names: list[str]) -> None:
    """Fail before training when a named logger is unknown or its package is missing (one line each)."""
    import importlib.util

    for name in names:
        if name not in LOGGERS:
            import difflib

            close = difflib.get_close_matches(name, LOGGERS, n=1)
            raise HarnessError(f"unknown logger {name!r}" + (f"; did you mean {close[0]}?" if close else "") + f" loggers= takes {', '.join(LOGGERS)}")
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise HarnessError(f"loggers={name} needs the {PACKAGES[name]} package, which is not installed: pip install 'harness-bench[{EXTRAS[name]}]'")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested spec as flat `a.b.c` keys (what MLflow's parameters and TensorBoard's text take)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(flatten(value[k], f"{prefix}{k}."))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}{i}."))
        return out if value else {prefix[:-1]: "[]"}
    return {prefix[:-1]: value}


def run_name(spec: Any) -> str:
    return f"{spec.entry} seed={spec.seed} ({spec.run_id[:8]})"


def curves(result: dict[str, Any], *, with_train_loss: bool) -> dict[str, list[float | None]]:
    """The per-epoch curves of a result record (and its training loss, where no epoch was reported)."""
    series = result.get("series") or {}
    out = {name: values for name, values in sorted(series.items()) if name.endswith("_per_epoch")}
    if with_train_loss and "train_loss" in series:
        out["train_loss"] = series["train_loss"]
    return out


def final_metrics(result: dict[str, Any]) -> dict[str, float]:
    return {name: m["value"] for name, m in sorted((result.get("metrics") or {}).items()) if isinstance(m.get("value"), (int, float))}


# ---------------------------------------------------------------------------------------------
# backends: start(spec) / epoch(spec, step, values) / end(spec, result, with_train_loss) / close()
# ---------------------------------------------------------------------------------------------


class TensorBoardLogger:
    def __init__(self, log_dir: Path):
        self.root = log_dir / "tensorboard"
        self.writers: dict[str, Any] = {}

    def start(self, spec: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.root / spec.run_id))
        writer.add_text("spec", "```json\n" + json.dumps(spec.canonical(), indent=1, sort_keys=True) + "\n```", 0)
        writer.add_text("entry", f"{spec.entry} seed={spec.seed} ({spec.variant_label})", 0)
        self.writers[spec.run_id] = writer

    def epoch(self, spec: Any, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writers[spec.run_id].add_scalar(name, value, step)

    def end(self, spec: Any, result: dict[str, Any], *, with_train_loss: bool) -> None:
        writer = self.writers.pop(spec.run_id)
        for name, values in curves(result, with_train_loss=with_train_loss).items():
            for i, value in enumerate(values):
                if value is not None:
                    writer.add_scalar(name, value, i + 1)
        for name, value in final_metrics(result).items():
            writer.add_scalar(f"final/{name}", value, 0)
        writer.add_text("status", str(result.get("status")), 0)
        writer.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


class MLflowLogger:
    """Through `MlflowClient` with explicit run ids: runs of a local pool overlap in time, which
    MLflow's one-active-run API cannot express."""

    def __init__(self, log_dir: Path, suite: str):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # a local file store: MLflow 3 keeps it (in maintenance) behind this switch; a database needs SQLAlchemy
            uri = (log_dir / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        name = f"harness-{suite}"
        experiment = self.client.get_experiment_by_name(name)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.runs: dict[str, str] = {}

    def start(self, spec: Any) -> None:
        run = self.client.create_run(self.experiment_id, run_name=run_name(spec),
                                     tags={"harness.run_id": spec.run_id, "harness.entry": spec.entry, "harness.variant": spec.variant_label})
        self.runs[spec.run_id] = run.info.run_id
        for key, value in flatten(spec.canonical()).items():
            self.client.log_param(run.info.run_id, key[:250], str(value)[:6000])

    def epoch(self, spec: Any, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.client.log_metric(self.runs[spec.run_id], name, value, step=step)

    def end(self, spec: Any, result: dict[str, Any], *, with_train_loss: bool) -> None:
        rid = self.runs.pop(spec.run_id)
        for name, values in curves(result, with_train_loss=with_train_loss).items():
            for i, value in enumerate(values):
                if value is not None:
                    self.client.log_metric(rid, name, value, step=i + 1)
        for name, value in final_metrics(result).items():
            self.client.log_metric(rid, f"final/{name}", value)
        self.client.set_tag(rid, "harness.status", str(result.get("status")))
        self.client.set_terminated(rid, "FINISHED" if result.get("status") == "ok" else "FAILED")

    def close(self) -> None:
        for rid in self.runs.values():
            self.client.set_terminated(rid, "KILLED")
        self.runs.clear()


class WandbLogger:
    def __init__(self, log_dir: Path, suite: str):
        self.dir = log_dir
        self.project = os.environ.get("WANDB_PROJECT") or f"harness-{suite}"
        self.runs: dict[str, Any] = {}

    def start(self, spec: Any) -> None:
        import wandb

        self.dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.project, name=run_name(spec), group=f"{spec.suite} {spec.variant_label}", job_type=spec.entry,
                         config=spec.canonical(), dir=str(self.dir), reinit="create_new", tags=[spec.entry])
        run.define_metric("epoch")
        run.define_metric("*", step_metric="epoch")
        self.runs[spec.run_id] = run

    def epoch(self, spec: Any, step: int, values: dict[str, float]) -> None:
        self.runs[spec.run_id].log({**values, "epoch": step})

    def end(self, spec: Any, result: dict[str, Any], *, with_train_loss: bool) -> None:
        run = self.runs.pop(spec.run_id)
        by_epoch: dict[int, dict[str, float]] = {}
        for name, values in curves(result, with_train_loss=with_train_loss).items():
            for i, value in enumerate(values):
                if value is not None:
                    by_epoch.setdefault(i + 1, {})[name] = value
        for step in sorted(by_epoch):
            run.log({**by_epoch[step], "epoch": step})
        run.summary.update({f"final/{k}": v for k, v in final_metrics(result).items()} | {"status": result.get("status")})
        run.finish(exit_code=0 if result.get("status") == "ok" else 1)

    def close(self) -> None:
        for run in self.runs.values():
            run.finish(exit_code=1)
        self.runs.clear()
        import wandb

        wandb.teardown()  # the W&B service process ends with the grid


class RunLoggers:
    """The observer plugin: every enabled backend, fed by the coordinator's hooks."""

    def __init__(self, names: list[str], log_dir: Path, suite: str):
        check_available(names)
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        makers = {"tensorboard": lambda: TensorBoardLogger(log_dir), "mlflow": lambda: MLflowLogger(log_dir, suite), "wandb": lambda: WandbLogger(log_dir, suite)}
        self.backends = [makers[n]() for n in dict.fromkeys(names)]
        self.reported: set[str] = set()  # runs whose epochs arrived through harness_run_progress
        self.started: set[str] = set()

    def _start(self, spec: Any) -> None:
        if spec.run_id not in self.started:
            self.started.add(spec.run_id)
            for backend in self.backends:
                backend.start(spec)

    @hookimpl
    def harness_run_start(self, spec: Any) -> None:
        self._start(spec)

    @hookimpl
    def harness_run_progress(self, spec: Any, epoch: int, epochs: int, train_loss: float) -> None:
        self._start(spec)
        self.reported.add(spec.run_id)
        for backend in self.backends:
            backend.epoch(spec, epoch, {"train_loss": train_loss})

    @hookimpl
    def harness_run_end(self, spec: Any, result: dict[str, Any]) -> None:
        self._start(spec)
        self.started.discard(spec.run_id)
        for backend in self.backends:
            backend.end(spec, result, with_train_loss=spec.run_id not in self.reported)

    @hookimpl
    def harness_grid_end(self, stored: int, failed: int) -> None:
        self.close()

    def close(self) -> None:
        for backend in self.backends:
            backend.close()
