"""Padding-free and packed batches (trainer/packing.py): the same loss and gradients as the padded
batch, examples kept apart, and the packed plan's shape. These run in fp32, so on a GPU too they
take the per-example fallback; the two tests marked for CUDA run the fused flash varlen kernel in
bf16 (benchmarks/gpu_check.sh runs this file on a lent GPU)."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.test_train import data_file, lora_state, make_rows, tiny  # noqa: F401 (data_file: a fixture)
from trainer import packing
from trainer.batching import StepPlan, collate, packed_batches, split_flat
from trainer.format import IGNORE, Encoded, Formatter, encode_all
from trainer.model import CausalLMLoss, load_student
from trainer.train import Hooks, train

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="module")
def loaded(student):
    """The 2-layer student with LoRA (dropout off) switched to the padding-free attention, and
    six encoded examples of different lengths."""
    from trainer.data import Fields, to_example

    torch.manual_seed(0)
    model, tok, stop = load_student(student, DEVICE, torch.float32, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                    target_modules=None, gradient_checkpointing=False)
    assert packing.enable(model, 64) is None
    rows = [to_example(r, "t", Fields()) for r in make_rows(6, seed=3)]
    enc, _ = encode_all(Formatter(tok, None, stop), rows, 64, "truncate")
    assert len({e.n_tokens for e in enc}) > 3  # lengths differ, so the padded batch really pads
    return model, tok, enc


def loss_and_grads(model, batch: dict, fast: bool = True) -> tuple[float, dict]:
    model.zero_grad(set_to_none=True)
    loss_fn = CausalLMLoss(model)
    loss_fn.fast = fast  # False: through the model's own forward, as models with head extras go
    loss, n = loss_fn(**packing.to_device(batch, DEVICE))
    loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()) / n, grads, n


@pytest.mark.parametrize("fast", [True, False], ids=["decoder_and_head", "model_forward"])
def test_padding_free_batch_has_the_padded_batchs_loss_and_gradients(loaded, fast):
    model, tok, enc = loaded
    padded, g_pad, n_pad = loss_and_grads(model, collate(enc, tok.pad_token_id), fast)
    flat, g_flat, n_flat = loss_and_grads(model, packing.collate(enc), fast)
    assert n_flat == n_pad  # the same supervised tokens: no first-token target, no padding
    assert flat == pytest.approx(padded, rel=1e-5)
    assert g_flat.keys() == g_pad.keys() and len(g_pad) == 28  # 2 layers x 7 modules x (A, B)
    # fp32; on a GPU the reduction order differs (one of 768 entries off by 3e-6 on an H200), while a
    # leak between examples moves these gradients by ~1e-3 and more
    for k in g_pad:
        torch.testing.assert_close(g_flat[k], g_pad[k], rtol=1e-4, atol=1e-5)


def test_examples_laid_end_to_end_do_not_see_each_other(loaded):
    """The same row with the attention not split by example gives another loss: the isolation is
    what makes the numbers above equal (this is the test that fails without it)."""
    model, tok, enc = loaded
    flat = packing.collate(enc)
    alone, _, _ = loss_and_grads(model, flat)
    joined = dict(flat, cu_seq_lens_q=flat["cu_seq_lens_q"][[0, -1]], cu_seq_lens_k=flat["cu_seq_lens_k"][[0, -1]],
                  max_length_q=flat["input_ids"].shape[1], max_length_k=flat["input_ids"].shape[1])
    seen, _, _ = loss_and_grads(model, joined)
    assert abs(seen - alone) > 1e-3


def test_collate_resets_positions_and_ignores_each_first_label():
    a = Encoded([5, 6, 7], [IGNORE, 6, 7])
    b = Encoded([8, 9], [8, 9])  # a first token with a label (no prompt): it must not be a target
    batch = packing.collate([a, b])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5] and batch["max_length_q"] == 3


def test_packed_plan_fills_micro_batches_by_tokens_and_keeps_every_example():
    lengths = [((i * 37) % 300) + 20 for i in range(500)]
    batches = packed_batches(lengths, 1024, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in batches)
    assert sum(sum(lengths[i] for i in b) for b in batches[:-1]) / (1024 * (len(batches) - 1)) > 0.8
    plan = StepPlan(lengths, 8, 1, 1, seed=0, pack_tokens=1024)
    assert plan.steps_per_epoch == len(batches)
    epoch0 = [plan.step(s)[0][0] for s in range(plan.steps_per_epoch)]
    epoch1 = [plan.step(plan.steps_per_epoch + s)[0][0] for s in range(plan.steps_per_epoch)]
    assert sorted(map(sorted, epoch0)) == sorted(map(sorted, epoch1)) and epoch0 != epoch1  # reshuffled
    assert split_flat([0, 1, 2, 3], [10, 20, 30, 40], 50) == [[0, 1], [2], [3]]
    assert split_flat([0, 1], [10, 20], 0) == [[0, 1]]


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "gradient_checkpointing"])
def test_training_padding_free_matches_padded_training(student, data_file, tmp_path, checkpointing):
    """Two steps of `sprout train`, padded and padding-free: the same LoRA weights after them."""
    states = {}
    for free in (False, True):
        seen = {}
        hooks = Hooks(on_model=lambda m: seen.setdefault("m", m))
        summary = train(tiny(data_file, tmp_path / str(free), model=student, padding_free=free, lora_dropout=0.0,
                             eval_fraction=0.2, gradient_checkpointing=checkpointing), hooks)
        assert summary["batches"] == ("padding-free" if free else "padded")
        states[free] = lora_state(seen["m"])
        assert summary["eval_loss"] > 0
    for k in states[False]:
        torch.testing.assert_close(states[True][k], states[False][k], rtol=1e-4, atol=1e-5)


def test_packing_fills_each_micro_batch_by_tokens(student, data_file, tmp_path):
    out = tmp_path / "packed"
    summary = train(tiny(data_file, out, model=student, packing=True, max_steps=None, epochs=1, batch_size=2))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    tokens = [round(r["tokens_per_s"] * r["step_seconds"]) for r in steps]
    # 24 rows of ~20-60 tokens in micro-batches of at most 2 x 64 tokens, most of them nearly full
    assert all(t <= 128 for t in tokens) and sum(tokens[:-1]) / (128 * (len(tokens) - 1)) > 0.6, tokens
    assert summary["steps"] == len(steps) and all(math.isfinite(r["loss"]) for r in steps)


def test_settings_padding_free_cannot_honour_are_refused(tmp_path):
    from types import SimpleNamespace

    from generator.errors import UserError
    from trainer.config import check

    with pytest.raises(UserError, match="SFT"):
        check(tiny(tmp_path / "d.jsonl", tmp_path / "o", method="dpo", packing=True))
    with pytest.raises(UserError, match="drop --no-padding-free"):
        check(tiny(tmp_path / "d.jsonl", tmp_path / "o", packing=True, padding_free=False))
    # attention this module does not reproduce: refused, not silently different
    mistral = SimpleNamespace(model_type="mistral", sliding_window=4096)
    assert "sliding-window" in packing.unsupported(mistral, 8192)
    assert packing.unsupported(mistral, 4096) is None  # no example is longer than the window
    assert "soft-capped" in packing.unsupported(SimpleNamespace(attn_logit_softcapping=50.0), 512)
    assert "sink" in packing.unsupported(SimpleNamespace(model_type="gpt_oss"), 512)
    assert packing.unsupported(SimpleNamespace(model_type="llama", sliding_window=None), 512) is None


def test_padding_free_on_a_model_it_cannot_serve_is_refused_with_the_reason(student, data_file, tmp_path):
    """An explicit --padding-free says why (auto, which is off on CPU anyway, trains padded)."""
    from generator.errors import UserError

    cfg = json.loads((Path(student) / "config.json").read_text())
    windowed = tmp_path / "windowed"
    shutil.copytree(student, windowed)
    (windowed / "config.json").write_text(json.dumps({**cfg, "sliding_window": 16}))
    with pytest.raises(UserError, match="--padding-free: .*sliding-window attention \\(16 tokens\\)"):
        train(tiny(data_file, tmp_path / "a", model=str(windowed), padding_free=True))


@pytest.mark.skipif(not packing.available(DEVICE, torch.bfloat16), reason="the fused kernel needs a CUDA GPU")
def test_flash_varlen_kernel_matches_the_padded_batch_in_bf16(student, monkeypatch):
    """On a GPU, in bf16 as `sprout train` runs there: the fused varlen kernel gives the padded
    batch's loss (bf16 rounding apart) and LoRA gradients pointing the same way."""
    from trainer.data import Fields, to_example

    torch.manual_seed(0)
    model, tok, stop = load_student(student, DEVICE, torch.bfloat16, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                                    target_modules=None, gradient_checkpointing=False)
    assert packing.enable(model, 64) is None
    enc, _ = encode_all(Formatter(tok, None, stop), [to_example(r, "t", Fields()) for r in make_rows(8, seed=5)],
                        64, "truncate")
    calls, kernel = [], packing.varlen_kernel()

    @functools.wraps(kernel)  # the signature stays the kernel's: _flash_varlen reads it
    def counted(*args, **kw):
        calls.append(args[0].shape)
        return kernel(*args, **kw)

    monkeypatch.setattr(packing, "varlen_kernel", lambda: counted)
    results = []
    for batch in (collate(enc, tok.pad_token_id), packing.collate(enc)):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, n = CausalLMLoss(model)(**packing.to_device(batch, DEVICE))
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for _, p in model.named_parameters() if p.grad is not None])
        results.append((float(loss.detach()) / n, grads))
    (padded, g_pad), (flat, g_flat) = results
    assert len(calls) == 2  # one per layer of the padding-free forward; the padded one went to SDPA
    assert flat == pytest.approx(padded, rel=2e-2)
    assert torch.nn.functional.cosine_similarity(g_flat, g_pad, dim=0) > 0.98


def reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                     window_size=(-1, -1), enable_gqa=False):
    """What torch's varlen_attn (2.12+ signature) computes, on any device: (T, heads, dim) in and out."""
    assert window_size in ((-1, -1), (-1, 0)) and (enable_gqa or query.shape[1] == key.shape[1])
    b = cu_seq_q.tolist()
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(
        query[s:e].transpose(0, 1), key[s:e].transpose(0, 1), value[s:e].transpose(0, 1),
        is_causal=window_size == (-1, 0), scale=scale, enable_gqa=enable_gqa).transpose(0, 1)
        for s, e in zip(b[:-1], b[1:])])


def reference_varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch 2.10's signature: is_causal, no scale, no grouped kv heads."""
    return reference_varlen(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k,
                            window_size=(-1, 0) if is_causal else (-1, -1))


@pytest.mark.parametrize("kernel", [reference_varlen, reference_varlen_2_10])
def test_flash_varlen_call_lays_out_heads_and_causality_as_the_fallback(kernel):
    """The layout and arguments _flash_varlen hands the fused kernel (which only runs on CUDA),
    checked against the per-example SDPA fallback with a reference kernel of each torch signature."""
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 11, 16), torch.randn(1, 2, 11, 16), torch.randn(1, 2, 11, 16)  # grouped kv heads
    cu = torch.tensor([0, 4, 11], dtype=torch.int32)
    fused = packing._flash_varlen(kernel, q, k, v, cu, 7, 16 ** -0.5)
    fallback, _ = packing.attention(None, q, k, v, None, scaling=16 ** -0.5, cu_seq_lens_q=cu, max_length_q=7)
    assert fused.shape == fallback.shape == (1, 11, 6, 16)
    torch.testing.assert_close(fused, fallback)


@pytest.mark.skipif(not packing.available(DEVICE, torch.bfloat16), reason="the fused kernel needs a CUDA GPU")
def test_flash_varlen_kernel_matches_the_per_example_attention_and_keeps_examples_apart():
    """The fused kernel against the exact per-example SDPA calls, at the attention itself in bf16
    (a leak between examples moves outputs by far more than bf16 rounding: the joined call below)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, h, 300, 64, device=DEVICE, dtype=torch.bfloat16) for h in (8, 2, 2))
    cu = torch.tensor([0, 40, 170, 300], dtype=torch.int32, device=DEVICE)
    fused = packing._flash_varlen(packing.varlen_kernel(), q, k, v, cu, 130, 64 ** -0.5)
    exact = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, s:e].float(), k[:, :, s:e].float(), v[:, :, s:e].float(), is_causal=True, enable_gqa=True)
        for s, e in ((0, 40), (40, 170), (170, 300))], dim=2).transpose(1, 2)
    torch.testing.assert_close(fused.float(), exact, atol=2e-2, rtol=2e-2)
    joined = packing._flash_varlen(packing.varlen_kernel(), q, k, v, cu[[0, -1]], 300, 64 ** -0.5)
    assert (joined.float() - exact).abs().max() > 0.1
