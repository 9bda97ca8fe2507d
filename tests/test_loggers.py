"""Experiment loggers on the observer hooks: each writes its local files (TensorBoard event files,
an MLflow file store, a W&B offline run), read back here; a missing package is one line naming the extra."""

from __future__ import annotations

import glob
import importlib.util
import json
from pathlib import Path

import pytest

from harness.store import ResultStore
from harness.testing import offline_environ, run_cli

pytestmark = pytest.mark.slow
EPOCHS = 2


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One tiny grid run with every installed logger; its stored record and log folder."""
    names = [n for n in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(n) is not None]
    if not names:
        pytest.skip("no logger package installed (pip install 'harness-bench[tensorboard,mlflow,wandb]')")
    tmp = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**offline_environ(tmp), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        results = tmp / "results"
        code, _, err = run_cli("run", "suite=long_tail", "method=ce", "seeds=1", f"epochs={EPOCHS}", f"results={results}",
                               f"loggers={','.join(names)}", f"log_dir={tmp / 'logs'}")
        assert code == 0, err
    (record,) = ResultStore(results).scan()[0].values()
    return record, tmp / "logs"


def test_tensorboard_event_files_hold_the_epochs_curves_and_final_metrics(logged):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record, logs = logged
    events = EventAccumulator(str(logs / "tensorboard" / record["run_id"]))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == list(range(1, EPOCHS + 1))  # one point per epoch, from harness_run_progress
    assert [e.value for e in events.Scalars("train_loss")] == pytest.approx(record["series"]["train_loss"], rel=1e-6)
    assert [e.value for e in events.Scalars("test_top1_per_epoch")] == pytest.approx(record["series"]["test_top1_per_epoch"], rel=1e-6)
    assert events.Scalars("final/top1")[0].value == pytest.approx(record["metrics"]["top1"]["value"], rel=1e-6)
    assert "long_tail" in events.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()


def test_mlflow_file_store_holds_the_spec_as_parameters_and_the_metrics(logged):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    record, logs = logged
    client = MlflowClient(tracking_uri=(logs / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("harness-long_tail")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["harness.run_id"] == record["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["suite"] == "long_tail" and run.data.params["methods.0.name"] == "ce" and run.data.params["seed"] == "0"
    assert run.data.metrics["final/top1"] == pytest.approx(record["metrics"]["top1"]["value"])
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))


def test_wandb_offline_run_holds_the_config_curves_and_summary(logged):
    pytest.importorskip("wandb")
    record, logs = logged
    (run_file,) = glob.glob(str(logs / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = Path(run_file).read_bytes()  # protobuf records: names and JSON-encoded values appear as they are
    for needle in ("final/top1", "test_top1_per_epoch", "train_loss", "long_tail", json.dumps(record["metrics"]["top1"]["value"])):
        assert needle.encode() in data, needle


def test_a_missing_logger_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, _, err = run_cli("run", "suite=long_tail", "method=ce", "loggers=wandb", f"results={tmp_path}")
    assert code == 2 and err.strip() == "harness: error: loggers=wandb needs the wandb package, which is not installed: pip install 'harness-bench[wandb]'"
    code, _, err = run_cli("run", "suite=long_tail", "method=ce", "loggers=tensorbord", f"results={tmp_path}")
    assert code == 2 and "did you mean tensorboard?" in err
    code, _, err = run_cli("run", "suite=long_tail", "method=ce", "loger=mlflow", f"results={tmp_path}")
    assert code == 2 and "did you mean loggers?" in err
    assert not (tmp_path / "runs").exists()  # nothing trained
