"""`sprout train --report-to`: real wandb and mlflow, no network.

The tracker runs are read back with the libraries' own readers where they work offline: MLflow's
client on the local file store; for W&B offline there is no reader (wandb.Api needs the server,
and an offline run writes no files/wandb-summary.json), so the run's .wandb file -- a LevelDB-style
log of protobuf records -- is decoded here with wandb's own protobuf classes.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from generator.errors import UserError
from tests.test_train import data_file, tiny  # noqa: F401 (data_file is a fixture)
from trainer.config import TrainConfig, check
from trainer.train import Hooks, train

REPO = Path(__file__).resolve().parents[1]


def wandb_records(path: Path):
    """The protobuf records of a W&B run file: a 7-byte file header (":W&B", magic, version), then
    LevelDB log records (crc32, length, type: full / first / middle / last) in 32 KiB blocks."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, part = path.read_bytes(), 32768, 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        part, pos = part + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:  # zero padding at the end of the file
            break
        if kind in (1, 4):  # full, last
            record = pb.Record()
            record.ParseFromString(part)
            part = b""
            yield record


def wandb_history(run_dir: Path) -> list[dict]:
    (run_file,) = run_dir.glob("run-*.wandb")
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in wandb_records(run_file) if r.WhichOneof("record_type") == "history"]


def wandb_config(run_dir: Path) -> dict:
    (run_file,) = run_dir.glob("run-*.wandb")
    runs = [r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"]
    return {u.key: json.loads(u.value_json) for u in runs[0].config.update}


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tracked(student, data_file, tmp_path_factory):  # noqa: F811
    """A run logged to wandb (offline: no key, no WANDB_MODE) and mlflow (OUT/mlruns), interrupted
    after step 3 (checkpoint at 2) and resumed."""
    out = tmp_path_factory.mktemp("tracked") / "out"
    cfg = dict(model=student, max_steps=4, save_every=2, eval_fraction=0.2, eval_every=2, batch_size=2,
               max_length=48, report_to=["wandb", "mlflow"])
    seen = {}

    class Interrupt(Exception):
        pass

    def crash(step, record):
        if step == 3:
            raise Interrupt

    with pytest.MonkeyPatch.context() as mp:
        for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
                    "MLFLOW_ALLOW_FILE_STORE"):  # unset, and restored afterwards (trackers.py may set the last)
            mp.delenv(var, raising=False)
        mp.setenv("NETRC", str(out.parent / "no-netrc"))  # no `wandb login` either
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        with pytest.raises(Interrupt):
            train(tiny(data_file, out, **cfg), Hooks(on_step=crash))
        seen["state_after_crash"] = state = json.loads((out / "trackers.json").read_text())
        from mlflow.tracking import MlflowClient

        seen["status_after_crash"] = MlflowClient(state["mlflow"]["tracking_uri"]).get_run(
            state["mlflow"]["run_id"]).info.status
        train(tiny(data_file, out, resume=True, **cfg), Hooks(on_model=lambda m: seen.update(model=m)))
    return {"out": out, **seen}


def test_mlflow_mirrors_metrics_and_resumes_the_same_run(tracked):
    from mlflow.tracking import MlflowClient

    out = tracked["out"]
    state = json.loads((out / "trackers.json").read_text())
    assert state["mlflow"] == tracked["state_after_crash"]["mlflow"]  # --resume: the same run
    assert state["mlflow"]["tracking_uri"] == (out / "mlruns").resolve().as_uri()
    client = MlflowClient(tracking_uri=state["mlflow"]["tracking_uri"])
    run_id = state["mlflow"]["run_id"]
    logged = {}
    for m in client.get_metric_history(run_id, "train/loss"):
        logged[m.step] = m.value  # the resumed step 3 comes after the crashed run's
    records = metrics(out)
    assert logged == {r["step"]: r["loss"] for r in records if "loss" in r}
    evals = [(m.step, m.value) for m in client.get_metric_history(run_id, "eval/eval_loss")]
    assert evals == [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    run = client.get_run(run_id)
    assert tracked["status_after_crash"] == "FAILED" and run.info.status == "FINISHED"
    assert run.data.params["lr"] == "0.001" and run.data.params["report_to"] == '["wandb", "mlflow"]'
    assert run.data.params["resume"] == "False"  # params are the first start's; MLflow keeps them write-once
    assert {"train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(run.data.metrics)


def test_wandb_offline_mirrors_metrics_and_keeps_the_run_id(tracked):
    out = tracked["out"]
    run_id = json.loads((out / "trackers.json").read_text())["wandb"]["id"]
    assert run_id == tracked["state_after_crash"]["wandb"]["id"]
    crashed, resumed = sorted((out / "wandb").glob(f"offline-run-*-{run_id}"))  # one folder per start
    records = metrics(out)
    rows = wandb_history(resumed)
    train_rows = [(r["train/global_step"], r["train/loss"]) for r in rows if "train/loss" in r]
    assert train_rows == [(r["step"], r["loss"]) for r in records if "loss" in r and r["step"] > 2]
    assert train_rows[-1][1] == [r["loss"] for r in records if "loss" in r][-1]  # the final loss
    assert [(r["train/global_step"], r["eval/eval_loss"]) for r in rows if "eval/eval_loss" in r] == \
        [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r and r["step"] > 2]
    first = [(r["train/global_step"], r["train/loss"]) for r in wandb_history(crashed) if "train/loss" in r]
    assert first[:2] == [(r["step"], r["loss"]) for r in records if "loss" in r][:2]
    assert [s for s, _ in first] == [1, 2, 3]
    config = wandb_config(resumed)
    assert config["lr"] == 0.001 and config["max_steps"] == 4 and config["report_to"] == ["wandb", "mlflow"]


def test_report_to_names_are_checked(tmp_path):
    from trainer import trackers

    assert trackers.selected(["tensorboard"]) == ["tensorboard"]
    assert trackers.selected(["wandb,MLflow", "wandb"]) == ["wandb", "mlflow"]  # YAML string or list
    assert trackers.selected(["none"]) == [] and trackers.selected([]) == []
    with pytest.raises(UserError, match=r"--report-to comet: unknown tracker; choose from tensorboard, wandb, "
                                        r"mlflow, none"):
        check(TrainConfig(data="d", out=str(tmp_path), report_to=["wandb", "comet"]))
    with pytest.raises(UserError, match="'none' turns every tracker off"):
        check(TrainConfig(data="d", out=str(tmp_path), report_to=["none", "wandb"]))


def test_report_to_none_writes_no_tracker_files(student, data_file, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    train(tiny(data_file, out, model=student, max_steps=1, report_to=["none"]))
    assert not any((out / name).exists() for name in ("tensorboard", "wandb", "mlruns", "trackers.json"))
    assert len(metrics(out)) == 1


def test_missing_tracker_package_is_one_line_before_the_model_loads(data_file, tmp_path):  # noqa: F811
    """The package blocked in a fresh interpreter (`sys.modules[name] = None` makes its import fail)."""
    script = (
        "import sys\n"
        "sys.modules[sys.argv[1]] = None\n"
        "from trainer.cli import main\n"
        "sys.exit(main(['train', '--data', sys.argv[2], '--out', sys.argv[3], '--report-to', sys.argv[4]]))\n")
    for module, tracker, install in (("wandb", "tensorboard,wandb", "pip install wandb"),
                                     ("mlflow", "mlflow", "pip install mlflow-skinny")):
        out = tmp_path / module
        proc = subprocess.run([sys.executable, "-c", script, module, str(data_file), str(out), tracker],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        err = proc.stderr.strip()
        assert proc.returncode == 2 and "\n" not in err, err
        assert err.startswith(f"sprout train: error: --report-to {module}: the {module} package") and install in err
        assert not out.exists()  # stopped before anything was written, let alone a model loaded


def test_a_failing_tracker_is_switched_off_not_the_run(student, data_file, tmp_path, monkeypatch, capsys):  # noqa: F811
    """The MLflow store vanishes after step 1: one line says so, training and metrics.jsonl go on."""
    import shutil

    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    out = tmp_path / "out"

    def remove_store(step, record):
        if step == 1:
            shutil.rmtree(out / "mlruns")

    summary = train(tiny(data_file, out, model=student, max_steps=3, batch_size=2, max_length=48,
                         report_to=["mlflow"]), Hooks(on_step=remove_store))
    assert summary["steps"] == 3 and [r["step"] for r in metrics(out)] == [1, 2, 3]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("mlflow: ")]
    assert len(lines) == 1 and lines[0].startswith("mlflow: logging failed at step 2 (")
    assert "mlflow is off for the rest of the run" in lines[0]
