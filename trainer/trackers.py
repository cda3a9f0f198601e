"""Experiment trackers for `sprout train --report-to`: TensorBoard, Weights & Biases, MLflow.

OUT/metrics.jsonl is the record of a run; trackers mirror it. They get the same scalars under the
same names (`train/loss`, `train/lr`, ..., `eval/eval_loss`) at the same optimizer steps, and only
rank 0 opens them (MetricsLog is built on rank 0 alone). A tracker that fails in the middle of a
run says so in one line and is switched off: a mirror never stops a training run.

    tensorboard  OUT/tensorboard/ when the `tensorboard` package is installed (silently off without
                 it, as before --report-to existed: it is the default)
    wandb        run files under OUT/wandb/. WANDB_MODE is respected; without it and without an API key
                 (WANDB_API_KEY or a `wandb login` entry in ~/.netrc) the run is logged offline, to
                 upload later with `wandb sync`. Project: WANDB_PROJECT, else "sprout".
    mlflow       a local file store at OUT/mlruns unless MLFLOW_TRACKING_URI is set. Experiment:
                 MLFLOW_EXPERIMENT_NAME, else "sprout".
    none         no tracker at all, TensorBoard included

--resume logs into the same runs: OUT/trackers.json keeps the W&B run id and the MLflow run id.
W&B online resumes the run (resume="allow"); offline, each start writes its own
offline-run-*-ID folder under that id. Steps a crashed run logged after its last checkpoint are
logged again by the resumed run, so a tracker can show those steps twice; metrics.jsonl keeps only
the resumed values. W&B plots against `train/global_step` (as HF Trainer's integration does)
rather than its own step counter, which refuses steps lower than one already logged.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

from generator.errors import UserError

CHOICES = ("tensorboard", "wandb", "mlflow", "none")
# tracker -> (module imported, what to install)
PACKAGES = {"wandb": ("wandb", "pip install wandb"), "mlflow": ("mlflow", "pip install mlflow-skinny")}
STATE = "trackers.json"  # the run ids --resume continues


def selected(names: list[str] | None) -> list[str]:
    """The trackers `names` ask for, in order; "a,b" items are split (a YAML string works too);
    "none" means no tracker. Unknown names are a UserError listing the choices."""
    flat = [n.strip().lower() for item in names or [] for n in str(item).split(",") if n.strip()]
    unknown = [n for n in flat if n not in CHOICES]
    if unknown:
        raise UserError(f"--report-to {','.join(unknown)}: unknown tracker; choose from {', '.join(CHOICES)}")
    if "none" in flat and len(set(flat)) > 1:
        raise UserError(f"--report-to {','.join(flat)}: 'none' turns every tracker off; give it alone")
    return [] if "none" in flat else list(dict.fromkeys(flat))


def require(names: list[str] | None) -> None:
    """Import the packages of the requested trackers now, so a missing one stops the run before the
    model loads, in one line. (TensorBoard is optional: it is the default and always was.)"""
    for name in selected(names):
        if name in PACKAGES:
            module, install = PACKAGES[name]
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise UserError(f"--report-to {name}: the {module} package is not installed or does not "
                                f"import ({e}); {install}, or drop {name} from --report-to") from None


def tag(key: str) -> str:
    """The tracker name of a metrics.jsonl key: eval keys under eval/, the rest under train/."""
    return f"eval/{key}" if key.startswith("eval") else f"train/{key}"


def open_trackers(names: list[str] | None, out: Path, config: dict, resume: bool) -> list:
    names = selected(names)
    state_path = out / STATE
    state = {}
    if resume and state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
        except ValueError:
            state = {}  # a torn file: new tracker runs, metrics.jsonl is unaffected
    opened = []
    try:
        for name in names:
            if name == "tensorboard":
                try:
                    opened.append(TensorBoard(out))
                except ImportError:
                    pass
            elif name == "wandb":
                opened.append(WandB(out, config, state.get("wandb", {}).get("id")))
            elif name == "mlflow":
                opened.append(MLflow(out, config, state.get("mlflow", {})))
    except BaseException:
        for t in opened:
            t.close(failed=True)
        raise
    new_state = {t.name: t.state() for t in opened if t.state()}
    if new_state:
        from generator.runs import atomic_write

        atomic_write(state_path, json.dumps({**state, **new_state}, indent=2))
    return opened


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class TensorBoard:
    name = "tensorboard"

    def __init__(self, out: Path):
        from torch.utils.tensorboard import SummaryWriter  # ImportError without the tensorboard package

        self.writer = SummaryWriter(str(out / "tensorboard"))

    def state(self) -> dict:
        return {}

    def log(self, scalars: dict, step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def wandb_has_key() -> bool:
    """An API key in the environment or in the netrc file `wandb login` writes to."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC") or None).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandB:
    name = "wandb"

    def __init__(self, out: Path, config: dict, run_id: str | None):
        import wandb

        mode = None  # wandb reads WANDB_MODE itself
        if not os.environ.get("WANDB_MODE") and not wandb_has_key():
            mode = "offline"
            say(f"wandb: no WANDB_API_KEY (or wandb login), so logging offline under {out / 'wandb'}; "
                "upload later with `wandb sync`")
        try:
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "sprout", name=out.name,
                                  dir=str(out), config=config, id=run_id, resume="allow", mode=mode)
        except Exception as e:  # wandb raises its own errors for auth / network; all are one line here
            raise UserError(f"--report-to wandb: cannot start a W&B run ({type(e).__name__}: {e})") from None
        self.run.define_metric("train/global_step")
        self.run.define_metric("*", step_metric="train/global_step", step_sync=True)

    def state(self) -> dict:
        return {"id": self.run.id}

    def log(self, scalars: dict, step: int) -> None:
        self.run.log({**scalars, "train/global_step": step})

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class MLflow:
    name = "mlflow"

    def __init__(self, out: Path, config: dict, saved: dict):
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from generator.redact import redact_url

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (out / "mlruns").resolve().as_uri()
            # MLflow 3.x refuses a file store (it wants a database, which mlflow-skinny cannot run)
            # unless this opt-out is set; a user's own value wins.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = redact_url(uri)  # what is stored and printed: a server URL may carry credentials
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = saved.get("run_id") if saved.get("tracking_uri") == self.uri else None
            if self.run_id:
                try:  # --resume: the same run, running again
                    self.client.update_run(self.run_id, status="RUNNING")
                except MlflowException:
                    self.run_id = None  # deleted or another store: start a new run below
            if not self.run_id:
                name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "sprout"
                exp = self.client.get_experiment_by_name(name)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(name)
                self.run_id = self.client.create_run(exp_id, run_name=out.name).info.run_id
                self._log_params(config)  # params are write-once: only a new run gets them
        except MlflowException as e:
            raise UserError(f"--report-to mlflow: cannot start an MLflow run at {self.uri} ({e.message})") from None

    def _log_params(self, config: dict) -> None:
        from mlflow.entities import Param

        text = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v) for k, v in config.items()}
        params = [Param(k, v[:6000]) for k, v in text.items()]  # 6000: MLflow's longest param value
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def state(self) -> dict:
        return {"run_id": self.run_id, "tracking_uri": self.uri}

    def log(self, scalars: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in scalars.items()])

    def close(self, failed: bool = False) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")
