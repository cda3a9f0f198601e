"""Resumable checkpoints: OUT/checkpoints/step-NNNNNN/ holds

    adapter/           the LoRA weights as a standard PEFT adapter (servable as is)
    optimizer.pt       AdamW moments (--strategy fsdp: gathered whole, keyed by parameter name)
    scheduler.pt       learning-rate schedule position
    rng-rankR.safetensors  Python, NumPy and torch (CPU and CUDA) generator states of each rank
    state.json         steps done, and the epoch and step-in-epoch to continue from (data position)

The batch plan is a function of (seed, epoch), so step + RNG states are all a resumed run needs to
take exactly the batches and dropout masks the uninterrupted run would have.

Power-loss safety: a checkpoint is written to a temporary folder, every file and folder in it is
fsynced, then it is renamed and the parent fsynced -- a crash at any point leaves the old
checkpoints and at most a stray .tmp folder. Resuming still validates: it reads every file of the
newest checkpoint before touching the model (a disk can lie, a user can copy half a folder); a
damaged one is set aside as corrupt-step-N (with a note on stderr) and the next older one is used.

Nothing here is unpickled: the RNG states are tensors plus JSON in a safetensors file, and the
optimizer and scheduler states load with torch.load(weights_only=True), so a crafted checkpoint
cannot run code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from generator.errors import UserError
from generator.runs import fsync_dir
from trainer import dist
from trainer.dist import DistInfo

PREFIX = "step-"
CORRUPT = "corrupt-"


def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's generator states as (tensors, metadata) for a safetensors file: no pickle."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"numpy_keys": torch.from_numpy(keys.astype(np.int64)), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, t in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = t
    meta = {"python": json.dumps([version, list(mt), gauss]),
            "numpy": json.dumps([kind, int(pos), int(has_gauss), float(cached)])}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    version, mt, gauss = json.loads(meta["python"])
    random.setstate((version, tuple(mt), gauss))
    kind, pos, has_gauss, cached = json.loads(meta["numpy"])
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_rng(path: Path) -> None:
    from safetensors.torch import save_file

    tensors, meta = rng_state()
    save_file(tensors, str(path), metadata=meta)


def load_rng(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if "python" not in meta or "numpy" not in meta or "torch" not in tensors or "numpy_keys" not in tensors:
        raise ValueError("RNG state incomplete")
    return tensors, meta


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder (deepest first) under `root`, `root` included."""
    folders = []
    for folder, _, files in os.walk(root):
        folders.append(Path(folder))
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for folder in reversed(folders):
        fsync_dir(folder)


def save(out: Path, info: DistInfo, step: int, epoch: int, in_epoch: int, model, optimizer, scheduler,
         keep: int, sharded: bool = False) -> Path:
    """Write checkpoint `step`. `sharded` (--strategy fsdp over several processes): every rank
    takes part in gathering the LoRA weights and optimizer state, and rank 0 writes them whole, in
    the same files (the optimizer state keyed by parameter name instead of position)."""
    root = out / "checkpoints"
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}"
    if info.main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier(info)
    save_rng(tmp / f"rng-rank{info.rank}.safetensors")
    adapter = optim = None
    if sharded:
        from trainer import sharding

        adapter, optim = sharding.full_trainable_state(model, info), sharding.full_optimizer_state(model, optimizer)
    if info.main:
        model.save_pretrained(tmp / "adapter", state_dict=adapter)
        torch.save(optim if sharded else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        state = {"step": step, "epoch": epoch, "step_in_epoch": in_epoch, "world_size": info.world,
                 "sharded": sharded}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    dist.barrier(info)  # every rank's RNG file is in before the rename
    if info.main:
        fsync_tree(tmp)  # the data is on disk before the rename makes it the newest checkpoint
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(root)
        for old in checkpoint_dirs(out)[:-keep] if keep else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier(info)
    return final


def read(path: Path, info: DistInfo, sharded: bool = False) -> dict:
    """Every file of checkpoint `path`, read and checked, nothing applied yet. Raises ValueError
    (or the reader's own error) naming what is damaged."""
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"state.json unreadable ({e})") from None
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) for k in ("step", "epoch", "step_in_epoch")):
        raise ValueError("state.json lacks step / epoch / step_in_epoch")
    world = state.get("world_size", 1)
    if world != info.world:  # not damage: the user's mistake, and an older checkpoint has the same
        raise UserError(f"{path}: written by {world} processes, resumed with {info.world}; "
                        "resume with the same number of processes")
    if state.get("sharded", False) != sharded:  # the optimizer state is stored another way
        was, now = ("fsdp", "ddp") if state.get("sharded") else ("ddp", "fsdp")
        raise UserError(f"{path}: written by a --strategy {was} run of {world} processes, resumed with --strategy "
                        f"{now}; resume with the same strategy")
    found = {"state": state}
    try:
        found["adapter"] = load_file(str(path / "adapter" / "adapter_model.safetensors"), device=str(info.device))
    except Exception as e:
        raise ValueError(f"adapter/adapter_model.safetensors unreadable ({type(e).__name__}: {e})") from None
    for name in ("optimizer", "scheduler"):
        try:
            found[name] = torch.load(path / f"{name}.pt", map_location=info.device, weights_only=True)
        except Exception as e:
            raise ValueError(f"{name}.pt unreadable ({type(e).__name__}: {e})") from None
    for rank in range(world):  # every rank's file, so every rank decides the same way
        rng = path / f"rng-rank{rank}.safetensors"
        try:
            tensors = load_rng(rng)
        except Exception as e:
            raise ValueError(f"{rng.name} unreadable ({type(e).__name__}: {e})") from None
        if rank == info.rank:
            found["rng"] = tensors
    return found


def load(path: Path, info: DistInfo, model, optimizer, scheduler, sharded: bool = False) -> dict:
    """Restore checkpoint `path` into the live objects; returns its state.json."""
    return _apply(path, read(path, info, sharded), model, optimizer, scheduler, sharded)


def _apply(path: Path, found: dict, model, optimizer, scheduler, sharded: bool = False) -> dict:
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, found["adapter"])
    if getattr(result, "unexpected_keys", None):
        raise UserError(f"{path}: adapter does not match this model/LoRA config ({result.unexpected_keys[:3]}...)")
    if sharded:
        from trainer import sharding

        sharding.load_optimizer_state(model, optimizer, found["optimizer"])
    else:
        optimizer.load_state_dict(found["optimizer"])
    scheduler.load_state_dict(found["scheduler"])
    set_rng_state(*found["rng"])
    return found["state"]


def load_newest_good(out: Path, info: DistInfo, model, optimizer, scheduler, sharded: bool = False
                     ) -> tuple[Path, dict]:
    """Resume from the newest checkpoint that reads back whole; damaged newer ones are renamed
    corrupt-step-N (so pruning never keeps them over good ones) and reported on stderr."""
    damaged, chosen = [], None
    for path in reversed(checkpoint_dirs(out)):
        try:
            found = read(path, info, sharded)
        except ValueError as e:
            damaged.append((path, str(e)))
            continue
        chosen = path
        break
    dist.barrier(info)  # every rank has chosen before rank 0 renames anything
    if info.main:
        for path, why in damaged:
            aside = path.with_name(CORRUPT + path.name)
            shutil.rmtree(aside, ignore_errors=True)
            path.rename(aside)
            print(f"warning: checkpoint {path} is damaged ({why}); moved to {aside.name}", file=sys.stderr)
        if damaged and chosen:
            print(f"warning: falling back to the older checkpoint {chosen}", file=sys.stderr, flush=True)
    if chosen is None:
        raise UserError(f"--resume: no usable checkpoint under {out / 'checkpoints'}; every one is damaged "
                        f"({'; '.join(f'{p.name}: {w}' for p, w in damaged)}); start again with --overwrite")
    return chosen, _apply(chosen, found, model, optimizer, scheduler, sharded)
