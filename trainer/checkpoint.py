"""Resumable checkpoints: OUT/checkpoints/step-NNNNNN/ holds

    adapter/           the LoRA weights as a standard PEFT adapter (servable as is)
    optimizer.pt       AdamW moments
    scheduler.pt       learning-rate schedule position
    rng-rankR.pt       Python, NumPy and torch (CPU and CUDA) generator states of each rank
    state.json         steps done, and the epoch and step-in-epoch to continue from (data position)

The batch plan is a function of (seed, epoch), so step + RNG states are all a resumed run needs to
take exactly the batches and dropout masks the uninterrupted run would have. A checkpoint is
written to a temporary folder and renamed, so a crash mid-write never leaves a half checkpoint.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from generator.errors import UserError
from trainer import dist
from trainer.dist import DistInfo

PREFIX = "step-"


def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(out: Path, info: DistInfo, step: int, epoch: int, in_epoch: int, model, optimizer, scheduler,
         keep: int) -> Path:
    root = out / "checkpoints"
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if info.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier(info)
    torch.save(rng_state(), tmp / f"rng-rank{info.rank}.pt")
    if info.main:
        model.save_pretrained(tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = {"step": step, "epoch": epoch, "step_in_epoch": in_epoch, "world_size": info.world}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    dist.barrier(info)  # every rank's RNG file is in before the rename
    if info.main:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoint_dirs(out)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(info)
    return final


def load(path: Path, info: DistInfo, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint into the live objects; returns its state.json."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state.get("world_size", 1) != info.world:
        raise UserError(f"{path}: written by {state.get('world_size')} processes, resumed with {info.world}; "
                        "resume with the same number of processes")
    weights = load_file(str(path / "adapter" / "adapter_model.safetensors"), device=str(info.device))
    result = set_peft_model_state_dict(model, weights)
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{path}: adapter does not match this model/LoRA config ({result.unexpected_keys[:3]}...)")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=info.device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / f"rng-rank{info.rank}.pt"
    set_rng_state(torch.load(rng, weights_only=False))  # holds NumPy/Python tuples, written by us
    return state
