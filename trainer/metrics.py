"""Training metrics: OUT/metrics.jsonl (one JSON object per logged step or eval), the record of
the run; the trackers --report-to picks (trainer/trackers.py: TensorBoard by default, W&B, MLflow)
mirror it. Also the loss-curve PNG and the peak-memory probe. Only rank 0 constructs a MetricsLog."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from trainer import trackers


def peak_memory_mb(device) -> float:
    """Peak GPU memory allocated on CUDA; the process's peak resident set size elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024  # macOS reports bytes


class MetricsLog:
    def __init__(self, out: Path, resume_step: int | None = None,
                 report_to: list[str] | tuple[str, ...] | None = ("tensorboard",), config: dict | None = None):
        self.path = out / "metrics.jsonl"
        if resume_step is not None and self.path.is_file():
            # Keep what the resumed run already logged up to its checkpoint; drop later lines,
            # which the resumed run is about to log again (and a line torn by a crash).
            from generator.runs import atomic_write

            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write(self.path, "".join(line + "\n" for line in kept))
        elif self.path.exists():
            self.path.unlink()
        self.file = self.path.open("a")
        try:
            self.trackers = trackers.open_trackers(list(report_to or []), out, config or {}, resume_step is not None)
        except BaseException:
            self.file.close()
            raise

    def log(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        scalars = {trackers.tag(k): v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for t in list(self.trackers):
            try:
                t.log(scalars, record["step"])
            except Exception as e:  # a mirror: metrics.jsonl has the step, the run goes on
                print(f"{t.name}: logging failed at step {record['step']} ({type(e).__name__}: {e}); "
                      f"{t.name} is off for the rest of the run, metrics.jsonl has every step", file=sys.stderr)
                self.trackers.remove(t)
                self._close(t, failed=True, quiet=True)  # a broken tracker may fail to close too; said once

    def close(self, failed: bool = False) -> None:
        """`failed`: the run stopped on an error (W&B and MLflow mark the run failed)."""
        self.file.close()
        for t in self.trackers:
            self._close(t, failed)
        self.trackers = []

    @staticmethod
    def _close(tracker, failed: bool, quiet: bool = False) -> None:
        try:
            tracker.close(failed)
        except Exception as e:  # the run's outputs are written; a tracker's goodbye cannot undo them
            if not quiet:
                print(f"{tracker.name}: closing failed ({type(e).__name__}: {e})", file=sys.stderr)


def read_metrics(path: Path) -> list[dict]:
    """The records of metrics.jsonl; a line a crash or power loss cut short is skipped."""
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def plot_loss(metrics_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean over supervised tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
