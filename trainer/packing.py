"""Padding-free batches: a micro-batch's examples laid end to end in one row, each attending only
to itself (`--padding-free`, and `--packing`, which also fills micro-batches by tokens).

A padded batch costs (examples x longest example) tokens; laid end to end it costs the sum of the
lengths. On a GPU the step of a LoRA student is largely host-bound (kernel launches, and SDPA's
cuDNN backend building a new execution plan for every new padded length: 2.8-3.7 ms per call
measured on an H200, benchmarks/RESULTS.md), so one long row also means one fixed set of launches
for more tokens. What keeps the examples apart:
  * position ids restart at 0 for each example, so the rotary embeddings are those it would have alone;
  * attention runs per example: torch's flash varlen kernel (`torch.nn.attention.varlen`) over the
    cumulative lengths on CUDA, one causal SDPA call per example elsewhere (exact, for CPU and tests);
  * the label of each example's first token is ignored, so no example is trained to predict the
    start of the next (a padded batch never has such a target either).
The loss and the gradients are those of the padded batch (tests/test_packing.py checks it).

The attention function is registered with transformers under ATTN (its documented extension point,
AttentionInterface); calls that carry no cumulative lengths -- padded eval batches, DPO pairs -- go to
transformers' own SDPA path with their padding mask, so one model serves both.
"""

from __future__ import annotations

import functools
import inspect

import torch

from trainer.format import IGNORE, Encoded

ATTN = "sprout_varlen"


@functools.cache  # looked up in every layer's attention: once is enough
def varlen_kernel():
    """torch's flash varlen attention, or None where this torch has none (it is CUDA-only)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether padding-free batches run on the fused kernel here (what --padding-free's auto picks):
    a CUDA GPU with flash attention (Ampere or newer) and a half-precision run."""
    return (device.type == "cuda" and varlen_kernel() is not None and dtype in (torch.bfloat16, torch.float16)
            and torch.cuda.get_device_capability(device) >= (8, 0))


# Attention this module does not reproduce: it would silently differ from the padded batch.
SINK_MODELS = ("gpt_oss",)


def unsupported(config, max_length: int) -> str | None:
    """Why this model's attention cannot run padding-free with the padded batch's results, or None."""
    window = getattr(config, "sliding_window", None)
    if window and max_length > window:  # a window no shorter than every example changes nothing
        return f"its sliding-window attention ({window} tokens) is shorter than --max-length {max_length}"
    if getattr(config, "attn_logit_softcapping", None):
        return "its attention scores are soft-capped"
    if getattr(config, "model_type", None) in SINK_MODELS:
        return "its attention has sink tokens"
    return None


def register() -> None:
    """Make ATTN a valid attn_implementation: our attention, and transformers' SDPA mask builder."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN, attention)
    AttentionMaskInterface.register(ATTN, sdpa_mask)


def enable(model, max_length: int) -> str | None:
    """Switch a loaded (peft or plain) model to ATTN; returns why it cannot be, or None once it is.
    transformers only warns when a model's code cannot switch (remote code, a model outside its
    attention interface): then the row would run as one sequence, so the switch is checked."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    why = unsupported(base.config, max_length)
    if why:
        return why
    register()
    try:
        base.set_attn_implementation(ATTN)
    except (ValueError, ImportError) as e:
        return f"transformers cannot switch its attention ({e})"
    if base.config._attn_implementation != ATTN:
        return "transformers cannot switch its attention implementation"
    return None


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' attention signature: query (1, heads, T, dim), key / value (1, kv heads, T, dim);
    returns ((1, T, heads, dim), None). Without `cu_seq_lens_q` in kwargs: transformers' SDPA."""
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    kernel = varlen_kernel()
    half = query.dtype
    if half == torch.float32 and query.is_cuda and torch.is_autocast_enabled("cuda"):
        # fp32 activations inside a bf16 run (QLoRA: bitsandbytes' 4-bit layers return fp32): the
        # kernel computes in the autocast dtype, as transformers' flash path casts
        half = torch.get_autocast_dtype("cuda")
    if query.is_cuda and kernel is not None and dropout == 0.0 and half in (torch.bfloat16, torch.float16):
        q, k, v = (t.to(half) for t in (query, key, value))
        return _flash_varlen(kernel, q, k, v, cu, kwargs["max_length_q"], scaling), None
    # exact fallback: one causal SDPA call per example (CPU, fp32, or attention dropout)
    bounds = cu.tolist()
    out = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling, dropout_p=dropout,
        enable_gqa=query.shape[1] != key.shape[1]) for s, e in zip(bounds[:-1], bounds[1:])]
    return torch.cat(out, dim=2).transpose(1, 2), None


def _flash_varlen(kernel, query, key, value, cu, max_len: int, scaling):
    """torch's varlen_attn across its versions: 2.10 takes is_causal and no scale; later ones a
    causal window (-1, 0), a scale, and (2.12+) grouped kv heads."""
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (T, heads, dim)
    params = _parameters(kernel)
    kw = {}
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if "scale" in params:
        kw["scale"] = scaling
    elif scaling is not None and abs(scaling - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(f"this torch's varlen_attn has no scale argument (model scale {scaling}); "
                         "use --no-padding-free")
    if "is_causal" in params:
        kw["is_causal"] = True
    else:
        kw["window_size"] = (-1, 0)
    return kernel(q, k, v, cu, cu, max_len, max_len, **kw).unsqueeze(0)


@functools.cache  # read once per kernel, not in every layer's call
def _parameters(kernel) -> frozenset:
    return frozenset(inspect.signature(kernel).parameters)


# --- batches --------------------------------------------------------------------------------------
def collate(examples: list[Encoded], pad_id: int | None = None) -> dict:
    """The examples end to end in one row: input_ids, labels (each example's first label ignored),
    position ids restarting per example, and the cumulative lengths the attention splits on.
    `pad_id` is unused (nothing is padded); it keeps the signature of batching.collate."""
    lengths = [len(e.input_ids) for e in examples]
    ids = torch.tensor([t for e in examples for t in e.input_ids], dtype=torch.long)[None]
    labels = torch.tensor([t for e in examples for t in e.labels], dtype=torch.long)[None]
    cu = torch.zeros(len(examples) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    labels[0, cu[:-1].long()] = IGNORE
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels, "position_ids": positions,
            "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": max(lengths), "max_length_k": max(lengths)}


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
