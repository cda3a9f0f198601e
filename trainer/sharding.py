"""--strategy fsdp: the student sharded over the processes with PyTorch FSDP2 (`fully_shard`).

DDP (the default) keeps a whole copy of the student on every process, so the student must fit
one device. FSDP splits every weight's rows over the processes instead: each decoder layer is a
shard group, all-gathered just before its forward and freed after it (gathered again for its
backward); the root group (the loss module) holds the rest -- embeddings, final norm, LM head.
Only the LoRA weights train; FSDP2 keeps requires_grad per parameter, so the frozen base is
sharded and gathered but never gets gradients or optimizer state.

The training loop stays the one of trainer/train.py; what keeps it right under FSDP:

* gradients: FSDP's reduce-scatter averages over the processes as DDP's all-reduce does, so the
  loss scale of `accumulate` (world / supervised tokens of the whole step) carries over
  unchanged, and gradient sync is off on all but the last pass of a step (`no_sync`).
* lockstep: every forward all-gathers, so every process must make the same number of forward
  (and backward) passes. A process whose micro-batches split into fewer passes (--max-pass-tokens)
  or that holds one eval batch fewer makes idle passes: one short row with nothing supervised --
  zero loss, zero gradient, no metric (`idle_passes`).
* clipping: the gradients are DTensors; torch's clip_grad_norm_ reduces the norm over the shards.
* outputs: every process takes part in gathering the full LoRA weights and optimizer state
  (one tensor at a time, onto the CPU of rank 0), and rank 0 writes them in the usual formats;
  a checkpoint's adapter loads back through peft as usual (FSDP2 shards a full tensor loaded
  into a sharded parameter), its optimizer state through set_optimizer_state_dict.
* --merge: the base is frozen, so rank 0 merges the saved adapter into a fresh copy of the base
  on the CPU instead of gathering the sharded one.

Loading: each process reads the student onto its CPU, and `fully_shard` moves only its own
shards to its GPU -- GPU memory holds 1/world of the student (plus one layer gathered at a
time), the CPU briefly a whole copy per process.

One process (no torchrun) has nothing to shard: --strategy fsdp then trains unsharded, as ddp.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn

from generator.errors import UserError
from trainer.format import IGNORE

IDLE_TOKENS = 8  # length of an idle pass's row: it only has to run every layer once


def active(strategy: str, info) -> bool:
    """True when this run shards: --strategy fsdp with more than one process."""
    return strategy == "fsdp" and info.active


def load_device(strategy: str, info) -> torch.device:
    """Where the student is read to: the CPU when it is about to be sharded (see the docstring)."""
    return torch.device("cpu") if active(strategy, info) else info.device


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The student's repeated blocks, by the class names transformers lists as never to be split
    across devices (`_no_split_modules`, e.g. LlamaDecoderLayer), innermost first."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or ())
    # children before parents: fully_shard must reach a nested block before the block around it
    return [m for m in reversed(list(base.modules())) if type(m).__name__ in names]


def shard(loss_fn: nn.Module, info) -> None:
    """Shard `loss_fn` (a CausalLMLoss around the peft model) in place over all processes: one
    group per decoder layer, then the root. Build the optimizer after this: sharding replaces
    the parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    layers = decoder_layers(loss_fn.model)
    if not layers:
        raise UserError(f"--strategy fsdp: cannot find the decoder layers of {type(loss_fn.model).__name__} "
                        "(its class lists no _no_split_modules); use --strategy ddp")
    mesh = init_device_mesh(info.device.type, (info.world,))
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(loss_fn, mesh=mesh)
    # DPO computes log-probs through supervised_logits, not forward: FSDP must gather for it too
    register_fsdp_forward_method(loss_fn, "supervised_logits")


def fsdp_root(module: nn.Module):
    """The outermost FSDP module inside `module` (the loss module, also when DPO wraps it), or
    None when nothing is sharded."""
    from torch.distributed.fsdp import FSDPModule

    return next((m for m in module.modules() if isinstance(m, FSDPModule)), None)


@contextmanager
def no_sync(step_fn: nn.Module):
    """Accumulate this pass's gradients locally: DDP's no_sync(), FSDP's gradient sync off."""
    root = fsdp_root(step_fn)
    if root is None:  # DistributedDataParallel
        with step_fn.no_sync():
            yield
        return
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def missing_passes(per_rank: list, lengths: list[int], budget: int, rank: int, split=None) -> int:
    """How many forward passes fewer than the busiest process this rank makes in one step (each
    process's micro-batches, cut by `split` as train.py cuts them: batching.split_by_tokens, or
    split_flat for padding-free batches)."""
    from trainer.batching import split_by_tokens

    split = split or split_by_tokens
    counts = [sum(len(split(mb, lengths, budget)) for mb in micro) for micro in per_rank]
    return max(counts) - counts[rank]


def missing_batches(n_batches: int, info) -> int:
    """Eval batches are dealt round-robin: the ranks after the remainder hold one fewer."""
    return math.ceil(n_batches / info.world) - len(range(info.rank, n_batches, info.world))


def idle_passes(module: nn.Module, batch: dict, n: int, info, backward: bool) -> None:
    """`n` passes that change nothing, to keep this rank's all-gathers (and, with `backward`, its
    gradient reduction) in step with the other ranks': the first few tokens of `batch`'s first
    row (real tokens, so no fully masked attention row makes NaNs) with no supervised label, run
    through the sharded loss module itself -- not DPO's wrapper, whose metrics would count it.
    The loss is a sum over no tokens: 0, with zero gradients. No-op when nothing is sharded.

    Run them before a step's real passes: the last pass, the one that reduces the gradients,
    must be a real one on every rank."""
    root = fsdp_root(module)
    if root is None or n <= 0:
        return
    ids = batch["input_ids"][:1, :IDLE_TOKENS].to(info.device)
    idle = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.full_like(ids, IGNORE)}
    for _ in range(n):
        if not backward:
            root(**idle)
            continue
        with no_sync(root):
            loss, _ = root(**idle)
            loss.backward()


def full_trainable_state(model: nn.Module, info) -> dict | None:
    """{parameter name: full CPU tensor} of the trainable (LoRA) weights on rank 0, None on the
    others. Every rank must call it: each weight is all-gathered in turn. The frozen base is left
    out -- it is what the student was loaded from."""
    from torch.distributed.tensor import DTensor

    state = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            full = p.full_tensor() if isinstance(p, DTensor) else p
            if info.main:
                state[name] = full.detach().cpu()
    return state if info.main else None


def full_optimizer_state(model: nn.Module, optimizer) -> dict:
    """The whole optimizer state keyed by parameter name on rank 0 (empty on the others); every
    rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load a `full_optimizer_state` (read by every rank) into the sharded optimizer: each rank
    keeps its own rows."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
