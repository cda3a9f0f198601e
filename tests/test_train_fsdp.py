"""--strategy fsdp: `torchrun --nproc-per-node 2` on CPU (gloo) with the student sharded (FSDP2).

A sharded run must be the run one process makes with the same global batch (2 ranks x batch 2 ==
1 process x batch 2 x accumulation 2): the same loss and gradient norm at every step, the same
eval loss, the same adapter and merged model up to float rounding. The settings make the
lockstep machinery work too: --max-pass-tokens 100 cuts the two-example micro-batches into two
passes and the epoch's last one-example batch into one, so at step 3 rank 0 makes an idle pass;
5 eval examples in batches of 2 leave rank 1 one eval batch short. Resuming a sharded run from
its checkpoint ends with the uninterrupted run's adapter, and DPO agrees too. This file is also the worker script
torchrun starts (see the __main__ block).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

SETTINGS = dict(max_length=64, max_pass_tokens=100, lora_r=4, lora_alpha=8, lora_dropout=0.0, batch_size=2,
                grad_accum=1, max_steps=3, eval_fraction=0.25, eval_every=0, save_every=2, warmup_ratio=0.0,
                lr=1e-3, progress=False)


def config(data: str, out: str, model: str, **kw):
    from trainer.config import TrainConfig

    return TrainConfig(data=data, out=out, model=model, **{**SETTINGS, **kw})


def worker(data: str, out: str, model: str, overrides: str) -> None:
    from trainer.train import train

    train(config(data, out, model, **json.loads(overrides)))


def torchrun(data: Path, out: Path, model: str, **overrides) -> None:
    from generator.server import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), __file__, str(data), str(out), model, json.dumps(overrides)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]


def steps(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def sharded_run(student, tmp_path_factory):
    from tests.test_train import make_rows

    root = tmp_path_factory.mktemp("fsdp")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(20, seed=1)))
    out = root / "fsdp"
    torchrun(data, out, student, strategy="fsdp", merge=True)
    return data, out


@pytest.mark.slow  # torchrun with two processes
def test_sharded_run_agrees_with_single_process(sharded_run, student, tmp_path, capfd):
    from trainer.batching import StepPlan
    from trainer.sharding import missing_passes
    from trainer.train import Hooks, train

    data, out = sharded_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["sharded"] and summary["steps"] == 3
    state = json.loads((out / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["world_size"] == 2 and state["sharded"]

    # The same global batch in one process, by accumulation ("fsdp" with one process: unsharded).
    seen = {}
    single = train(config(str(data), str(tmp_path / "single"), student, grad_accum=2, strategy="fsdp", merge=True),
                   Hooks(on_data=lambda t, e: seen.update(train=t, eval=e)))
    assert "nothing to shard, training unsharded" in capfd.readouterr().err
    assert not single["sharded"]

    # the run did exercise the idle passes: uneven pass counts at step 3, one eval batch short
    lengths = [e.n_tokens for e in seen["train"]]
    plan = StepPlan(lengths, SETTINGS["batch_size"], 1, 2, 0)
    assert missing_passes(plan.step(2), lengths, SETTINGS["max_pass_tokens"], 0) == 1
    assert len(seen["eval"]) == 5

    a, b = steps(out), steps(tmp_path / "single")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ("loss", "grad_norm", "lr"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5), (ra["step"], k)
    assert summary["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-5)

    wa, wb = adapter(out), adapter(tmp_path / "single")
    assert wa.keys() == wb.keys() and len(wa) == 28
    assert any(wa[n].abs().sum() > 0 for n in wa if "lora_B" in n)  # it trained
    for n in wa:  # atol: 1% of one step at lr 1e-3 -- Adam's g / sqrt(v) magnifies the rounding of
        # near-zero gradient entries (the reductions add in another order); measured worst 3.5e-6
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-4, atol=1e-4)

    from safetensors.torch import load_file

    ma, mb = (load_file(str(d / "merged" / "model.safetensors")) for d in (out, tmp_path / "single"))
    assert ma.keys() == mb.keys()
    for n in ma:
        torch.testing.assert_close(ma[n], mb[n], rtol=1e-4, atol=1e-4)


@pytest.mark.slow  # torchrun with two processes
def test_sharded_resume_ends_with_the_uninterrupted_adapter(sharded_run, student, tmp_path):
    """A copy of the run folder, resumed from its step-2 checkpoint (gathered LoRA weights and
    optimizer state, loaded back sharded), redoes step 3 exactly."""
    data, out = sharded_run
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    for name in ("adapter", "merged", "summary.json"):
        p = resumed / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    torchrun(data, resumed, student, strategy="fsdp", resume=True)

    a, b = steps(out), steps(resumed)
    assert [r["step"] for r in b] == [1, 2, 3]
    assert b[-1]["loss"] == pytest.approx(a[-1]["loss"], rel=1e-6)
    assert b[-1]["grad_norm"] == pytest.approx(a[-1]["grad_norm"], rel=1e-6)
    wa, wb = adapter(out), adapter(resumed)
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # torchrun with two processes
def test_sharded_dpo_agrees_with_single_process(student, tmp_path):
    """DPO reaches the sharded model through CausalLMLoss.supervised_logits (the reference
    log-probs, then every step): FSDP gathers for that method as for forward."""
    from trainer.train import train

    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Say {w}.", "chosen": f"{w} {w}.", "rejected": "No, sorry."}
            for w in ("red", "blue", "green", "stone", "river", "cloud", "tree", "lamp", "road", "sand")]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    dpo = dict(method="dpo", max_steps=2, max_pass_tokens=0, save_every=0, eval_fraction=0.2)
    torchrun(data, tmp_path / "fsdp", student, strategy="fsdp", **dpo)
    train(config(str(data), str(tmp_path / "single"), student, grad_accum=2, **dpo))
    for ra, rb in zip(steps(tmp_path / "fsdp"), steps(tmp_path / "single")):
        for k in ("loss", "grad_norm", "reward_margin", "reward_accuracy"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-5, abs=1e-7), k
    wa, wb = adapter(tmp_path / "fsdp"), adapter(tmp_path / "single")
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-4, atol=1e-4)


def test_strategy_is_checked_in_one_line(tmp_path, capsys):
    from trainer.cli import main

    rc = main(["train", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "out"), "--strategy", "foo"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "sprout train: error: --strategy 'foo': choose one of ddp, fsdp"


def test_resume_refuses_another_strategy(tmp_path):
    """The optimizer state of a sharded checkpoint is keyed by name, DDP's by position: a resume
    with the other --strategy is refused before anything is loaded."""
    from generator.errors import UserError
    from trainer import checkpoint
    from trainer.dist import DistInfo

    path = tmp_path / "checkpoints" / "step-000001"
    path.mkdir(parents=True)
    state = {"step": 1, "epoch": 0, "step_in_epoch": 1, "world_size": 1}
    (path / "state.json").write_text(json.dumps({**state, "sharded": True}))
    with pytest.raises(UserError, match="written by a --strategy fsdp run .* resumed with --strategy ddp"):
        checkpoint.read(path, DistInfo(), sharded=False)
    (path / "state.json").write_text(json.dumps(state))  # written before strategies: DDP
    with pytest.raises(UserError, match="written by a --strategy ddp run"):
        checkpoint.read(path, DistInfo(), sharded=True)


def test_idle_pass_counts():
    """Under FSDP every rank must make the same number of forward passes: how many each lacks."""
    from trainer.dist import DistInfo
    from trainer.sharding import missing_batches, missing_passes

    lengths = [60, 60, 60, 10, 10]
    per_rank = [[[0, 1]], [[2]]]  # budget 100: rank 0 cuts its micro-batch into two passes
    assert [missing_passes(per_rank, lengths, 100, r) for r in (0, 1)] == [0, 1]
    assert [missing_passes(per_rank, lengths, 0, r) for r in (0, 1)] == [0, 0]  # 0 = never cut
    assert [missing_batches(5, DistInfo(rank=r, world=2)) for r in (0, 1)] == [0, 1]
    assert [missing_batches(1, DistInfo(rank=r, world=4)) for r in range(4)] == [0, 1, 1, 1]


if __name__ == "__main__":
    worker(*sys.argv[1:5])
