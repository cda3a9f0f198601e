"""Direct Preference Optimisation (Rafailov et al. 2023) on top of the SFT machinery.

`sprout train --method dpo` runs the same loop as SFT (trainer/train.py: batching, accumulation,
clipping, checkpoints, metrics); what differs lives here:

* encoding: each pair is two conversations (prompt + chosen, prompt + rejected) encoded by the SFT
  Formatter, so the log-probability covers exactly what SFT's loss covers: the response tokens and
  the end-of-turn token, never the prompt;
* the policy log-prob of a response is the *sum* of its supervised token log-probs; chosen and
  rejected go through one forward pass (rows [chosen..., rejected...]);
* the reference policy is the model as it starts, evaluated ONCE before the first step and cached
  on each pair (`EncodedPair.ref_chosen` / `ref_rejected`): from a base model that is the model
  with the LoRA adapter switched off (peft's `disable_adapter()`, no second copy of the weights);
  from an SFT adapter (--init-adapter) it is the SFT model itself, adapter on -- DPO's reference
  should be the policy the preference data is compared against, and switching the adapter off
  there would pull towards the base model instead. Computed in eval mode (no dropout), so a resumed
  run recomputes exactly the same cache;
* the loss: sigmoid (the paper) -log sigmoid(beta * h) or IPO (h - 1/(2 beta))^2, with
  h = (logp_c - ref_c) - (logp_r - ref_r). Note TRL's IPO averages token log-probs over the
  response; here both losses use the summed log-probs.

The step's loss is normalised by its number of pairs (each pair counts 1 where an SFT token counts
1), so gradient accumulation and several processes give the gradients of one big batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from trainer.data import PreferencePair
from trainer.format import Encoded, EncodeStats, Formatter, fit

LOSSES = ("sigmoid", "ipo")


@dataclass
class EncodedPair:
    chosen: Encoded
    rejected: Encoded
    ref_chosen: float | None = None  # reference log-probs, filled once by `compute_reference`
    ref_rejected: float | None = None

    n_supervised = 1  # the unit the step's loss is normalised by: one pair

    @property
    def n_tokens(self) -> int:
        return self.chosen.n_tokens + self.rejected.n_tokens

    @property
    def batch_length(self) -> int:
        """Padded tokens the pair costs in a batch: two rows of the longer side."""
        return 2 * max(self.chosen.n_tokens, self.rejected.n_tokens)


def encode_pairs(formatter: Formatter, pairs: list[PreferencePair], max_length: int, overlong: str
                 ) -> tuple[list[EncodedPair], EncodeStats]:
    """Both sides with the SFT encoding and length rule; a pair is dropped when either side is."""
    stats = EncodeStats()
    kept = []
    for pair in pairs:
        stats.total += 1
        c, c_cut = fit(formatter.encode(pair.chosen), max_length, overlong)
        r, r_cut = fit(formatter.encode(pair.rejected), max_length, overlong)
        if c is None or r is None:
            stats.dropped += 1
            continue
        stats.truncated += c_cut or r_cut
        kept.append(EncodedPair(c, r))
    return kept, stats


def collate_pairs(pairs: list[EncodedPair], pad_id: int) -> dict:
    """One batch of 2B rows, chosen first; plus the cached reference log-probs when present."""
    from trainer.batching import collate

    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if all(p.ref_chosen is not None for p in pairs):
        batch["ref_chosen"] = torch.tensor([p.ref_chosen for p in pairs], dtype=torch.float32)
        batch["ref_rejected"] = torch.tensor([p.ref_rejected for p in pairs], dtype=torch.float32)
    return batch


def sequence_logps(lm, input_ids, attention_mask, labels) -> torch.Tensor:
    """Per row: the summed log-probability of its supervised tokens (`lm` is a CausalLMLoss)."""
    logits, targets = lm.supervised_logits(input_ids, attention_mask, labels)
    token_logps = -nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    rows = (labels[:, 1:] != -100).nonzero()[:, 0]  # row of each supervised position, row-major like logits
    return torch.zeros(input_ids.shape[0], device=token_logps.device).index_add(0, rows, token_logps)


def dpo_loss(logp_c: torch.Tensor, logp_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float,
             kind: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss per pair, chosen reward, rejected reward); rewards are beta * (policy - reference)."""
    h = (logp_c - ref_c) - (logp_r - ref_r)
    if kind == "sigmoid":
        losses = -nn.functional.logsigmoid(beta * h)
    elif kind == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {kind!r}")
    return losses, beta * (logp_c - ref_c).detach(), beta * (logp_r - ref_r).detach()


class DPOLoss(nn.Module):
    """forward(batch of pairs) -> (sum of pair losses, number of pairs), the contract of
    CausalLMLoss, so train.py's `accumulate` and `evaluate` work unchanged. Batch statistics
    (rewards, accuracy, log-probs) are summed in `self.totals` until `take_metrics()`."""

    STATS = ("pairs", "margin", "accuracy", "reward_chosen", "reward_rejected", "logp_chosen", "logp_rejected")

    def __init__(self, lm: nn.Module, beta: float, kind: str = "sigmoid"):
        super().__init__()
        self.lm, self.beta, self.kind = lm, beta, kind
        self.model = lm.model  # held_out_loss() switches train/eval mode through this
        self.totals = dict.fromkeys(self.STATS, 0.0)

    def forward(self, input_ids, attention_mask, labels, ref_chosen, ref_rejected):
        logps = sequence_logps(self.lm, input_ids, attention_mask, labels)
        b = ref_chosen.shape[0]
        logp_c, logp_r = logps[:b], logps[b:]
        losses, rc, rr = dpo_loss(logp_c, logp_r, ref_chosen, ref_rejected, self.beta, self.kind)
        for k, v in (("pairs", b), ("margin", (rc - rr).sum()), ("accuracy", (rc > rr).sum()),
                     ("reward_chosen", rc.sum()), ("reward_rejected", rr.sum()),
                     ("logp_chosen", logp_c.detach().sum()), ("logp_rejected", logp_r.detach().sum())):
            self.totals[k] += float(v)
        return losses.sum(), b

    def take_metrics(self, info, prefix: str = "") -> dict:
        """Means since the last call, over every rank's pairs; resets the totals."""
        from trainer import dist

        values = dist.sum_all(info, *(self.totals[k] for k in self.STATS))
        self.totals = dict.fromkeys(self.STATS, 0.0)
        n = max(values[0], 1)
        names = ("reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected", "logps_chosen",
                 "logps_rejected")
        return {prefix + name: v / n for name, v in zip(names, values[1:])}


def compute_reference(lm, pairs: list[EncodedPair], batch_size: int, pad_id: int, device,
                      adapter_off: bool, pass_tokens: int = 0) -> None:
    """Fill every pair's reference log-probs with the model as it is now, in eval mode; with
    `adapter_off` through peft's disable_adapter() (the base model, no second copy)."""
    from trainer.batching import split_by_tokens

    model = lm.model
    was_training = model.training
    model.eval()
    lengths = [p.batch_length for p in pairs]
    order = sorted(range(len(pairs)), key=lambda i: lengths[i])
    off = model.disable_adapter() if adapter_off else nullcontext()
    with torch.no_grad(), off:
        for b in range(0, len(order), batch_size):
            for part in split_by_tokens(order[b:b + batch_size], lengths, pass_tokens):
                batch = collate_pairs([pairs[i] for i in part], pad_id)
                logps = sequence_logps(lm, *(batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")))
                for j, i in enumerate(part):
                    pairs[i].ref_chosen, pairs[i].ref_rejected = float(logps[j]), float(logps[len(part) + j])
    model.train(was_training)
    bad = [i for i, p in enumerate(pairs) if not (math.isfinite(p.ref_chosen) and math.isfinite(p.ref_rejected))]
    if bad:
        from generator.errors import UserError

        raise UserError(f"the reference model gives non-finite log-probs for {len(bad)} pairs; use --dtype float32")
