"""What one optimizer step and one held-out pass compute, apart from the model: the learning-rate
schedule, gradient accumulation normalised over the whole step, and the held-out loss."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr for optimizer step `s` (0-based). Warmup starts above 0 so the
    first step already learns (with tiny runs a zero-lr step would be wasted)."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        progress = (s - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def accumulate(step_fn, micro_batches: list[dict], n_supervised: int, info=None) -> float:
    """Forward + backward over this rank's micro-batches of one optimizer step.

    Each micro-batch's summed token loss is divided by `n_supervised`, the supervised tokens of the
    *whole* step (all micro-batches, all ranks): the gradients then equal those of one big batch,
    whatever the split. DDP averages gradients over ranks, so the loss is scaled by the world size
    to turn that average back into the sum. Returns this rank's summed (not averaged) token loss."""
    from trainer import sharding

    world = info.world if info is not None else 1
    total = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = sharding.no_sync(step_fn) if world > 1 and not last else nullcontext()  # reduce once per step
        with sync:
            loss_sum, _ = step_fn(**batch)
            (loss_sum * (world / n_supervised)).backward()
        total = total + loss_sum.detach()
    return float(total)


def held_out_loss(loss_fn, encoded: list, batch_size: int, pad_id: int, info, collate=None) -> float:
    """Mean loss per unit (token for SFT, pair for DPO) over `encoded` (batches sorted by length,
    shared out over ranks)."""
    import torch

    from trainer import dist, sharding
    from trainer.batching import collate as collate_examples

    collate = collate or collate_examples
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].n_tokens)
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    loss_fn.model.eval()  # dropout off
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches[info.rank::info.world]:
            batch = {k: v.to(info.device) for k, v in collate([encoded[i] for i in b], pad_id).items()}
            s, n = loss_fn(**batch)
            total, count = total + float(s), count + int(n)
        # FSDP gathers the weights in every forward: a rank with one batch fewer joins in idle
        idle = sharding.missing_batches(len(batches), info)
        sharding.idle_passes(loss_fn, collate([encoded[order[0]]], pad_id), idle, info, backward=False)
    loss_fn.model.train()
    total, count = dist.sum_all(info, total, count)
    return total / max(count, 1)
