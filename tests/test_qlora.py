"""`sprout train --load-in-4bit` (QLoRA): the CPU refusal, the bf16 merge path (checked on CPU), and a
GPU run (slow tier; runs where a CUDA GPU is present)."""

from __future__ import annotations

import pytest
import torch

from generator.errors import UserError
from tests.test_train import data_file, lora_state, tiny  # noqa: F401 (data_file is a fixture)
from trainer.config import TrainConfig, check
from trainer.train import Hooks, train


def test_merge_onto_base_matches_the_trained_model(student, data_file, tmp_path):  # noqa: F811
    """The 4-bit --merge path (a fresh base + the saved adapter), checked here in fp32 on CPU."""
    from trainer.model import merge_onto_base

    seen = {}
    train(tiny(data_file, tmp_path / "out", model=student, max_steps=2, batch_size=2, max_length=48, lr=5e-3),
          Hooks(on_model=lambda m: seen.update(model=m)))
    merged = merge_onto_base(student, tmp_path / "out" / "adapter", torch.float32).eval()
    ids = torch.tensor([[1, 9690, 198, 22503, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        trained = seen["model"].eval()  # on the GPU where there is one
        torch.testing.assert_close(merged(input_ids=ids).logits, trained(input_ids=ids.to(trained.device)).logits.cpu(),
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error path")
def test_load_in_4bit_on_cpu_is_one_line(data_file, tmp_path):  # noqa: F811
    with pytest.raises(UserError, match=r"^--load-in-4bit needs a CUDA GPU \(bitsandbytes NF4\); drop it on CPU$"):
        check(TrainConfig(data=str(data_file), out=str(tmp_path / "out"), load_in_4bit=True))
    from trainer.cli import main

    assert main(["train", "--data", str(data_file), "--out", str(tmp_path / "out"), "--load-in-4bit"]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA needs a CUDA GPU (bitsandbytes NF4)")
def test_qlora_trains_and_its_adapter_loads_on_the_bf16_base(student, data_file, tmp_path):  # noqa: F811
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    seen = {}

    def on_model(model):
        seen["model"], seen["lora0"] = model, lora_state(model)

    out = tmp_path / "out"
    # lr 5e-3: an adapter that clearly moves the logits, so the bf16 merge can be told from the base
    summary = train(tiny(data_file, out, model=student, max_steps=3, lr=5e-3, load_in_4bit=True, dtype="auto",
                         gradient_checkpointing=True, merge=True), Hooks(on_model=on_model))
    assert summary["load_in_4bit"] is True and summary["device"] == "cuda"
    import bitsandbytes as bnb

    model = seen["model"]
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())  # the base really is 4-bit
    lora1 = lora_state(model)
    assert len(lora1) == 2 * 7 * 2 and all(not torch.equal(lora1[n], seen["lora0"][n]) for n in lora1)

    base = AutoModelForCausalLM.from_pretrained(student, dtype=torch.bfloat16).to("cuda")
    tuned = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    ids = torch.tensor([[1, 9690, 198, 22503, 2, 198, 1, 520, 9531, 198]], device="cuda")
    with torch.no_grad():
        logits = tuned(input_ids=ids).logits.float()
        with tuned.disable_adapter():
            plain = tuned(input_ids=ids).logits.float()
        merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.bfloat16).to("cuda").eval()
        merged_logits = merged(input_ids=ids).logits.float()
    effect = (logits - plain).abs().mean()
    assert torch.isfinite(logits).all() and effect > 0.1  # the adapter acts on the bf16 base
    # merged into bf16 weights the small LoRA delta is rounded, so close to the adapter, not equal
    # (on CPU, fp32-trained, this ratio measured ~0.03)
    assert (merged_logits - logits).abs().mean() < 0.2 * effect


def test_resume_of_a_run_fingerprinted_before_load_in_4bit_existed(tmp_path):
    """A fingerprint without the newer setting compares as its default: such a run still resumes,
    while one trained 4-bit is not resumed without --load-in-4bit."""
    import json

    from trainer.resume import FINGERPRINT, check_or_record_fingerprint, run_fingerprint

    cfg = TrainConfig(data="d", out=str(tmp_path), resume=True)
    fingerprint = run_fingerprint(cfg, "m", [], [])
    old = json.loads(json.dumps(fingerprint))
    del old["settings"]["load_in_4bit"]
    (tmp_path / FINGERPRINT).write_text(json.dumps(old))
    check_or_record_fingerprint(cfg, tmp_path, None, fingerprint)  # no error
    old["settings"]["load_in_4bit"] = True
    (tmp_path / FINGERPRINT).write_text(json.dumps(old))
    with pytest.raises(UserError, match="load_in_4bit: True then, False now"):
        check_or_record_fingerprint(cfg, tmp_path, None, fingerprint)
