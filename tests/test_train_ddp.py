"""The distributed path: `torchrun --nproc-per-node 2` on CPU (gloo) runs the unchanged trainer.

Both ranks must end with the same LoRA weights, and those must equal a single process that takes
the same global batch as gradient accumulation (2 ranks x batch 2 == 1 process x batch 2 x
accumulation 2: the step plan gives both the same micro-batches). This file is also the worker
script torchrun starts (see the __main__ block).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # torchrun with two processes

ROOT = Path(__file__).resolve().parent.parent


def config(data: str, out: str, model: str, **kw):
    from trainer.config import TrainConfig

    base = dict(data=data, out=out, model=model, max_length=48, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                batch_size=2, grad_accum=1, max_steps=2, eval_fraction=0.2, eval_every=0, save_every=1,
                warmup_ratio=0.0, lr=1e-3, progress=False)
    return TrainConfig(**{**base, **kw})


# Weights are compared with atol 1e-4: Adam moves a weight whose gradient is near zero by about lr
# (1e-3, 5e-3 for DPO) whatever that gradient's rounding, so the processes' different summation
# order shows in one element of thousands (1.0e-6 to 1.6e-5 on an Intel Xeon, 2026-11-27). Missing
# gradient sync moves nearly every weight by ~lr, and the per-step losses are compared as well.
def lora_weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def worker(data: str, out: str, model: str, method: str = "sft") -> None:
    """One torchrun process: train, then leave this rank's LoRA weights beside the outputs."""
    from trainer.train import Hooks, train

    seen = {}
    train(config(data, out, model, method=method), Hooks(on_model=lambda m: seen.update(model=m)))
    torch.save(lora_weights(seen["model"]), Path(out) / f"lora-rank{os.environ['RANK']}.pt")


def test_two_process_gloo_run_agrees_with_single_process(student, tmp_path):
    from generator.server import free_port
    from trainer.train import Hooks, train

    from tests.test_train import make_rows

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(20, seed=1)))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), __file__, str(data), str(out), student]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]

    w0, w1 = (torch.load(out / f"lora-rank{r}.pt", weights_only=True) for r in (0, 1))
    assert w0.keys() == w1.keys() and len(w0) == 28
    for n in w0:
        assert torch.equal(w0[n], w1[n]), n  # DDP keeps the replicas identical
    assert any(w0[n].abs().sum() > 0 for n in w0 if "lora_B" in n)  # and they trained

    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 and summary["eval_loss"] is not None
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    state = json.loads((out / "checkpoints" / "step-000001" / "state.json").read_text())
    assert state["world_size"] == 2
    rng_files = {p.name for p in (out / "checkpoints" / "step-000001").glob("rng-rank*")}
    assert rng_files == {"rng-rank0.safetensors", "rng-rank1.safetensors"}  # pickle-free RNG states

    # The same global batch in one process, by accumulation: same weights up to float rounding.
    seen = {}
    single = train(config(str(data), str(tmp_path / "single"), student, grad_accum=2),
                   Hooks(on_model=lambda m: seen.update(model=m)))
    ws = lora_weights(seen["model"])
    for n in w0:
        torch.testing.assert_close(w0[n], ws[n], rtol=1e-4, atol=1e-4)
    assert single["eval_loss"] == pytest.approx(summary["eval_loss"], rel=1e-5)


def test_two_process_dpo_agrees_with_single_process(student, tmp_path):
    """DPO through DDP: the pair-normalised loss and the reward metrics (summed over ranks) match
    one process taking the same global batch by accumulation."""
    from generator.server import free_port
    from trainer.train import Hooks, train

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Say {w}.", "chosen": f"{w} {w}.", "rejected": "No, sorry."}
            for w in ("red", "blue", "green", "stone", "river", "cloud", "tree", "lamp", "road", "sand")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), __file__, str(data), str(out), student, "dpo"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    w0, w1 = (torch.load(out / f"lora-rank{r}.pt", weights_only=True) for r in (0, 1))
    for n in w0:
        assert torch.equal(w0[n], w1[n]), n
    seen = {}
    train(config(str(data), str(tmp_path / "single"), student, grad_accum=2, method="dpo"),
          Hooks(on_model=lambda m: seen.update(model=m)))
    ws = lora_weights(seen["model"])
    for n in w0:
        torch.testing.assert_close(w0[n], ws[n], rtol=1e-4, atol=1e-4)

    def steps(d):
        return [r for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines()) if "loss" in r]

    for a, b in zip(steps(out), steps(tmp_path / "single")):
        for k in ("loss", "reward_margin", "reward_accuracy", "logps_chosen"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    evals = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "eval_loss" in r]
    assert evals and "eval_reward_accuracy" in evals[-1]


if __name__ == "__main__":
    worker(*sys.argv[1:5])
