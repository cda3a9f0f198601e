"""Length-grouped batches and the plan of which micro-batches make each optimizer step.

Padding is the main waste on instruction data (20 to 400+ tokens per example): a batch costs
as much as its longest example times its size. So examples are shuffled by seed, cut into
mega-batches of `MEGA` batches, sorted by length inside each, cut into batches, and the batch
order is shuffled again. Each batch is padded only to its own longest example.

The plan is a pure function of (lengths, batch size, seed, epoch), so every process of a
distributed run computes the same plan without talking, and a resumed run finds its place from
the step number alone.
"""

from __future__ import annotations

import math
import random

from trainer.format import IGNORE, Encoded

MEGA = 64  # batches per sorting window: close to a full sort, still random across epochs


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: bool = True
                           ) -> list[list[int]]:
    """The epoch's batches; `group=False`: plain random batches (--no-group-by-length)."""
    rng = random.Random(f"{seed}:{epoch}")  # str seeds hash deterministically (no PYTHONHASHSEED)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not group:
        return [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    window = batch_size * MEGA
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


class StepPlan:
    """Micro-batches (lists of example indices) for each (epoch, step-in-epoch), for every rank.

    One optimizer step takes `world * grad_accum` micro-batches; rank r gets the r-th run of
    `grad_accum` of them. In a distributed run a short last step is filled up with batches from the
    start of the epoch so that every rank has the same number of micro-batches (as PyTorch's
    DistributedSampler pads); a single process just takes a shorter last step.
    """

    def __init__(self, lengths: list[int], batch_size: int, grad_accum: int, world: int, seed: int,
                 group: bool = True, pack_tokens: int = 0):
        self.lengths, self.batch_size, self.grad_accum = lengths, batch_size, grad_accum
        self.world, self.seed, self.group = world, seed, group
        self.per_step = world * grad_accum
        # --packing: micro-batches of up to pack_tokens tokens, packed once, their order shuffled per epoch
        self.packed = packed_batches(lengths, pack_tokens, seed) if pack_tokens else None
        n_batches = len(self.packed) if self.packed else math.ceil(len(lengths) / batch_size)
        self.steps_per_epoch = max(1, math.ceil(n_batches / self.per_step))
        self._epoch, self._epoch_batches = None, []

    def _batches(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            self._epoch = epoch
            if self.packed:
                self._epoch_batches = list(self.packed)
                random.Random(f"{self.seed}:{epoch}").shuffle(self._epoch_batches)
            else:
                self._epoch_batches = length_grouped_batches(self.lengths, self.batch_size, self.seed, epoch,
                                                             self.group)
        return self._epoch_batches

    def step(self, step: int) -> list[list[list[int]]]:
        """For global step index `step` (0-based): one list of micro-batches per rank."""
        epoch, k = divmod(step, self.steps_per_epoch)
        batches = self._batches(epoch)
        group = batches[k * self.per_step:(k + 1) * self.per_step]
        if self.world > 1:
            while len(group) < self.per_step:
                group = group + batches[:self.per_step - len(group)]
        return [group[r * self.grad_accum:(r + 1) * self.grad_accum] for r in range(self.world)]

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch


def packed_batches(lengths: list[int], budget: int, seed: int) -> list[list[int]]:
    """--packing: micro-batches filled in a seeded random order up to `budget` tokens each (batch
    size x max length, what TRL's packed rows hold), so every step trains on about as many tokens,
    with examples of all lengths mixed as in random batches. Packed once, as TRL packs its dataset
    once; StepPlan shuffles their order per epoch."""
    rng = random.Random(f"pack:{seed}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    return split_flat(order, lengths, budget)


def split_flat(batch: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Cut a padding-free micro-batch (trainer/packing.py) into passes of at most `budget` tokens,
    the sum of their lengths, in order; each pass at least one example. As with split_by_tokens the
    gradients are the same whatever the cut."""
    if not budget:
        return [batch]
    passes, cur, size = [], [], 0
    for i in batch:
        if cur and size + lengths[i] > budget:
            passes.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += lengths[i]
    return passes + [cur]


def split_by_tokens(batch: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Cut a micro-batch into forward passes of at most `budget` padded tokens (each pass at least
    one example). The step's loss is normalised by its supervised tokens, so the gradients are the
    same whatever the cut; what changes is the activation memory, which grows with the tokens of
    one pass. Examples are taken longest first, so each pass pads little."""
    if not budget:
        return [batch]
    order = sorted(batch, key=lambda i: lengths[i], reverse=True)
    passes, cur = [], []
    for i in order:
        if cur and lengths[cur[0]] * (len(cur) + 1) > budget:
            passes.append(cur)
            cur = []
        cur.append(i)
    return passes + [cur]


def collate(examples: list[Encoded], pad_id: int):
    """Right-pad to the longest example of this batch; labels of padding are IGNORE."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
