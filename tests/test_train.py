"""The LoRA training loop, kept small: max_length 48-64, LoRA r 4, 2-4 steps.

Most tests train a 2-layer cut of the embedded model (its real first layers, tokenizer and chat
template; 15x less compute than 30 layers) so the suite stays within minutes on 2 cores; the CLI
test trains and reloads the full embedded model itself.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from generator.errors import UserError
from trainer.config import TrainConfig
from trainer.train import Hooks, TrainingDiverged, train

WORDS = ("the a cat dog sat ran on under big small red blue house tree river stone quickly slowly "
         "and then because when water light green old new").split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Deterministic Alpaca rows of mixed lengths (roughly 20-60 tokens formatted)."""
    rng = random.Random(seed)
    return [{"instruction": "Describe: " + " ".join(rng.choices(WORDS, k=rng.randint(2, 8))),
             "input": "" if i % 3 else "context " + " ".join(rng.choices(WORDS, k=3)),
             "output": " ".join(rng.choices(WORDS, k=rng.randint(2, 20))) + "."} for i in range(n)]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in make_rows(24)))
    return path


def tiny(data, out, **kw) -> TrainConfig:
    # fp32 on any device: these tests compare numbers (on a GPU `auto` would train in bf16)
    base = dict(data=str(data), out=str(out), max_length=64, lora_r=4, lora_alpha=8, batch_size=4, max_steps=2,
                eval_fraction=0.0, save_every=0, eval_every=0, warmup_ratio=0.0, progress=False, lr=1e-3,
                dtype="float32")
    return TrainConfig(**{**base, **kw})


def lora_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def base_state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


@pytest.fixture(scope="module")
def run(student, data_file, tmp_path_factory):
    """One small run with eval: the model's weights before and after, and the output folder."""
    out = tmp_path_factory.mktemp("run") / "out"
    seen = {}

    def on_model(model):
        seen["model"], seen["lora0"], seen["base0"] = model, lora_state(model), base_state(model)

    def on_step(step, record):
        seen.setdefault("training", []).append(seen["model"].training)

    summary = train(tiny(data_file, out, model=student, max_steps=3, eval_fraction=0.2, eval_every=2),
                    Hooks(on_model=on_model, on_step=on_step))
    return {"out": out, "summary": summary, **seen}


def test_base_weights_unchanged_and_lora_weights_changed(run):
    model = run["model"]
    base1, lora1 = base_state(model), lora_state(model)
    assert base1.keys() == run["base0"].keys() and len(base1) == 2 * 9 + 2  # layers, embeddings, final norm
    assert all(torch.equal(base1[n], run["base0"][n]) for n in base1)
    assert len(lora1) == 2 * 7 * 2  # 2 layers x q,k,v,o,gate,up,down x (A, B)
    changed = [n for n in lora1 if not torch.equal(lora1[n], run["lora0"][n])]
    assert len(changed) == len(lora1)  # every LoRA matrix learned something (B starts at zero)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    assert run["training"] == [True, True, True]  # train mode (LoRA dropout on), also after the eval at step 2


def test_outputs_written(run):
    out, summary = run["out"], run["summary"]
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "train_config.yaml", "metrics.jsonl", "loss.png", "summary.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"]) and math.isfinite(summary["eval_loss"])
    assert summary["examples"] == {"train": 19, "eval": 5, "truncated": 0, "dropped": 0}
    assert summary["tokens_per_s"] > summary["supervised_tokens_per_s"] > 0 and summary["peak_memory_mb"] > 100
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert {"lr", "tokens_per_s", "supervised_tokens_per_s", "peak_memory_mb", "grad_norm"} <= steps[0].keys()
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 3]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cfg = (out / "adapter" / "adapter_config.json").read_text()
    assert json.loads(cfg)["r"] == 4
    assert sorted(json.loads(cfg)["target_modules"]) == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                         "up_proj", "v_proj"]


def test_adapter_loads_with_peft_and_matches_trained_model(run, student):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(run["out"] / "adapter")).eval()
    ids = torch.tensor([[1, 9690, 198, 22503, 2, 198, 1, 520, 9531, 198]])
    trained = run["model"].eval()
    with torch.no_grad():
        tuned = loaded(input_ids=ids).logits
        # the trained model is on the GPU where there is one: the same fp32 numbers up to kernel rounding
        torch.testing.assert_close(tuned, trained(input_ids=ids.to(trained.device)).logits.cpu(), rtol=1e-4, atol=1e-4)
        with loaded.disable_adapter():
            plain = loaded(input_ids=ids).logits
    assert (tuned - plain).abs().max() > 1e-3  # the adapter does something


def test_grad_accumulation_matches_one_big_batch(student, data_file):
    """4 micro-batches of 2 give the loss and gradients of one batch of 8 (token-normalised)."""
    from trainer.batching import collate
    from trainer.data import load_examples
    from trainer.format import Formatter, encode_all
    from trainer.model import CausalLMLoss, load_student
    from trainer.stepping import accumulate

    torch.manual_seed(0)
    model, tok, _ = load_student(student, torch.device("cpu"), torch.float32, lora_r=4, lora_alpha=8,
                                 lora_dropout=0.0, target_modules=["q_proj", "v_proj"], gradient_checkpointing=False)
    with torch.no_grad():  # B starts at zero; make the adapter non-trivial so its A gradients are too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.02)
    encoded, _ = encode_all(Formatter(tok), load_examples(data_file)[:8], 64, "truncate")
    lengths = [len(e.input_ids) for e in encoded]
    assert len(set(lengths)) > 3  # mixed lengths, so padding differs between the two splits
    n_sup = sum(e.n_supervised for e in encoded)
    loss_fn = CausalLMLoss(model)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads_of(micro):
        model.zero_grad(set_to_none=True)
        loss = accumulate(loss_fn, [collate(mb, tok.pad_token_id) for mb in micro], n_sup) / n_sup
        return loss, [p.grad.clone() for p in params]

    loss_one, g_one = grads_of([encoded])
    loss_acc, g_acc = grads_of([encoded[i:i + 2] for i in range(0, 8, 2)])
    assert loss_acc == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(g_one, g_acc):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    # And it is the mean over supervised tokens, not a mean of per-batch means.
    per_batch = []
    for i in range(0, 8, 2):
        n = sum(e.n_supervised for e in encoded[i:i + 2])
        per_batch.append(accumulate(loss_fn, [collate(encoded[i:i + 2], tok.pad_token_id)], n) / n)
    assert abs(sum(per_batch) / 4 - loss_one) > 1e-4


def test_lr_schedules():
    from trainer.stepping import lr_factor

    warm = lr_factor("cosine", warmup=3, total=10)
    assert [round(warm(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # first step already learns
    assert warm(3) == 1.0 and 0 < warm(9) < 0.06 and warm(6) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 7)))
    lin = lr_factor("linear", warmup=0, total=4)
    assert [lin(s) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert [lr_factor("constant", 1, 5)(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


def test_split_by_tokens():
    from trainer.batching import split_by_tokens

    lengths = [10, 50, 30, 40, 20]
    assert split_by_tokens([0, 1, 2, 3, 4], lengths, 0) == [[0, 1, 2, 3, 4]]
    assert split_by_tokens([0, 1, 2, 3, 4], lengths, 100) == [[1, 3], [2, 4, 0]]  # 50*2, 30*3 padded tokens
    assert split_by_tokens([0, 1], lengths, 20) == [[1], [0]]  # an example longer than the budget goes alone


def test_pass_splitting_changes_memory_not_the_run(student, data_file, tmp_path):
    """--max-pass-tokens cuts batches into smaller forward passes; losses and weights stay the same."""
    runs = {}
    for budget in (0, 64):
        seen = {}
        train(tiny(data_file, tmp_path / str(budget), model=student, max_pass_tokens=budget, lora_dropout=0.0,
                   max_steps=2), Hooks(on_model=lambda m: seen.update(model=m)))
        lines = (tmp_path / str(budget) / "metrics.jsonl").read_text().splitlines()
        losses = [json.loads(line)["loss"] for line in lines]
        runs[budget] = losses, lora_state(seen["model"])
    assert runs[64][0] == pytest.approx(runs[0][0], rel=1e-5)
    # Adam scales each update to ~lr whatever the gradient's size, so where a gradient is near zero
    # the rounding of the two batch shapes' kernels shows: up to 3e-5 in one weight of 6144 (an
    # Intel Xeon CPU; 2.7e-5 on an H200). A real difference moves weights by ~lr = 1e-3.
    for n, w in runs[0][1].items():
        torch.testing.assert_close(runs[64][1][n], w, rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(student, data_file):
    from trainer.batching import collate
    from trainer.data import load_examples
    from trainer.format import Formatter, encode_all
    from trainer.model import CausalLMLoss, load_student
    from trainer.stepping import accumulate

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model, tok, _ = load_student(student, torch.device("cpu"), torch.float32, lora_r=4, lora_alpha=8,
                                     lora_dropout=0.0, target_modules=None, gradient_checkpointing=checkpointing)
        model.train()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        encoded, _ = encode_all(Formatter(tok), load_examples(data_file)[:4], 64, "truncate")
        accumulate(CausalLMLoss(model), [collate(encoded, tok.pad_token_id)], sum(e.n_supervised for e in encoded))
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        assert model.get_base_model().model.gradient_checkpointing is checkpointing
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("batches", [{}, {"packing": True}], ids=["grouped", "packed"])
def test_resume_continues_exactly(student, data_file, tmp_path, batches):
    """Interrupted after step 3 (checkpoint at 2) and resumed == uninterrupted, with dropout on."""
    cfg = dict(model=student, max_steps=4, save_every=2, lora_dropout=0.1, batch_size=2, grad_accum=2,
               warmup_ratio=0.25, max_length=48, **batches)
    seen = {}
    train(tiny(data_file, tmp_path / "a", **cfg), Hooks(on_model=lambda m: seen.update(a=m)))

    class Interrupt(Exception):
        pass

    def crash(step, record):
        if step == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny(data_file, tmp_path / "b", **cfg), Hooks(on_step=crash))
    assert (tmp_path / "b" / "checkpoints" / "step-000002" / "optimizer.pt").is_file()
    train(tiny(data_file, tmp_path / "b", resume=True, **cfg), Hooks(on_model=lambda m: seen.update(b=m)))

    def losses(out):
        records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"], r["lr"]) for r in records if "loss" in r]

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _, _ in b] == [1, 2, 3, 4]  # the interrupted run's step 3 was logged once, not twice
    for (sa, la, lra), (sb, lb, lrb) in zip(a, b):
        assert sa == sb and lra == pytest.approx(lrb) and lb == pytest.approx(la, rel=1e-6, abs=1e-7)
    la, lb = lora_state(seen["a"]), lora_state(seen["b"])
    for n in la:
        torch.testing.assert_close(la[n], lb[n], rtol=1e-6, atol=1e-7)


def test_resume_refuses_another_run_but_not_another_cadence(student, data_file, tmp_path):
    """--resume with other data, lr or batch size would continue a different run from these
    checkpoints: refused, naming what changed. Logging, checkpoint cadence and pass splitting
    do not change the run: accepted."""
    cfg = dict(model=student, max_steps=3, save_every=1, max_length=48)
    out = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def crash(step, record):
        if step == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny(data_file, out, **cfg), Hooks(on_step=crash))
    for change, named in (({"lr": 5e-3}, "lr: 0.001 then, 0.005 now"), ({"batch_size": 2}, "batch_size"),
                          ({"packing": True}, "packing: False then, True now"),
                          ({"system_prompt": "Be brief."}, "system_prompt")):
        with pytest.raises(UserError, match=named):
            train(tiny(data_file, out, resume=True, **{**cfg, **change}))
    edited = tmp_path / "edited.jsonl"  # the same rows but one, at another path
    rows = data_file.read_text().splitlines()
    edited.write_text("\n".join(rows[:-1] + [rows[-1].replace('."', ' again."')]) + "\n")
    with pytest.raises(UserError, match="the training data changed"):
        train(tiny(edited, out, resume=True, **cfg))
    moved = tmp_path / "moved.jsonl"  # the same content elsewhere is the same run
    moved.write_text(data_file.read_text())
    summary = train(tiny(moved, out, resume=True, log_every=2, save_every=2, max_pass_tokens=64, **{
        k: v for k, v in cfg.items() if k != "save_every"}))
    assert summary["steps"] == 3


def test_nan_loss_stops_the_run(student, data_file, tmp_path):
    calls = {"n": 0}

    def poison(module, args, output):  # the 2nd forward pass produces NaN activations
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 2 else output

    def on_model(model):
        model.get_base_model().get_input_embeddings().register_forward_hook(poison)

    with pytest.raises(TrainingDiverged, match=r"training stopped at step 2: loss nan .*Lower --lr"):
        train(tiny(data_file, tmp_path / "out", model=student, max_steps=4), Hooks(on_model=on_model))
    assert not (tmp_path / "out" / "adapter").exists()
    logged = (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1]


def test_refuses_to_overwrite_a_run_without_flag(data_file, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="already holds a training run .*--resume.*--overwrite"):
        train(tiny(data_file, tmp_path / "out"))
    with pytest.raises(UserError, match="--resume: no checkpoint"):
        train(tiny(data_file, tmp_path / "out", resume=True))


@pytest.mark.slow  # the full embedded model, trained and merged
def test_cli_train_with_yaml_config(embedded_model, data_file, tmp_path, capsys):
    yaml_path = tmp_path / "train.yaml"
    yaml_path.write_text("lora_r: 4\nlora_alpha: 8\nmax_length: 64\nbatch_size: 4\nmax_steps: 5\nprogress: false\n"
                         "dtype: float32\n")  # merged in fp32 on a GPU too, so it equals base + adapter
    out = tmp_path / "out"
    eval_file = tmp_path / "eval.json"
    eval_file.write_text(json.dumps(make_rows(3, seed=7)))
    rc = main(["train", "--config", str(yaml_path), "--data", str(data_file), "--out", str(out), "--max-steps", "2",
               "--eval-data", str(eval_file), "--merge", "--target-modules", "q_proj,v_proj"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2  # the flag beat the YAML's 5
    assert summary["examples"]["train"] == 24 and summary["examples"]["eval"] == 3  # all of --data trains
    assert math.isfinite(summary["eval_loss"])
    saved = (out / "train_config.yaml").read_text()
    assert "lora_r: 4" in saved and "max_steps: 2" in saved
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["target_modules"] in (
        ["q_proj", "v_proj"], ["v_proj", "q_proj"])
    assert (out / "merged" / "config.json").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert "done:" in capsys.readouterr().err

    # The adapter of the full embedded model loads with peft on its recorded base model.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter_cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == embedded_model
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], dtype=torch.float32)
    tuned = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 9690, 198, 22503, 2, 198, 1, 520, 9531, 198]])
    with torch.no_grad():
        logits = tuned(input_ids=ids).logits
        torch.testing.assert_close(merged(input_ids=ids).logits, logits, rtol=1e-4, atol=1e-4)
        with tuned.disable_adapter():
            assert (tuned(input_ids=ids).logits - logits).abs().max() > 1e-4


def test_cli_bad_data_exits_2_with_one_line(tmp_path, capsys):
    rc = main(["train", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err == f"sprout train: error: {tmp_path / 'nope.jsonl'}: no such file or folder"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    rc = main(["train", "--data", str(bad), "--out", str(tmp_path / "out2")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{bad} line 2: missing field 'output'" in err
    with pytest.raises(SystemExit) as exit_:  # argparse rejects the choice itself
        main(["train", "--data", str(bad), "--out", str(tmp_path / "out3"), "--overlong", "squash"])
    assert exit_.value.code == 2
    capsys.readouterr()
    rc = main(["train", "--out", str(tmp_path / "out4")])
    assert rc == 2 and "--data is required" in capsys.readouterr().err


# -- one prompt format from training to serving ---------------------------------------------------

CONVERSATIONS = [
    [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
]


@pytest.mark.parametrize("system_prompt", [None, "You answer in one line."])
def test_alpaca_chat_template_renders_what_training_renders(student_without_template, system_prompt):
    """Golden: for a student without a chat template, the template saved with its adapter renders
    each conversation exactly as the trainer did, and a generation prompt (what vLLM's chat
    endpoint sends) is the training text up to where the supervised answer starts."""
    from transformers import AutoTokenizer

    from trainer.data import Example
    from trainer.format import Formatter, adds_bos, alpaca_chat_template

    tok = AutoTokenizer.from_pretrained(student_without_template)
    fmt = Formatter(tok, system_prompt)
    assert not fmt.use_template
    template = alpaca_chat_template(system_prompt, adds_bos(tok))
    for conv in CONVERSATIONS:
        text, spans, _ = fmt.render(Example(conv, "x"))
        assert tok.apply_chat_template(conv, chat_template=template, tokenize=False) == text
        prompt = tok.apply_chat_template(conv[:-1], chat_template=template, tokenize=False, add_generation_prompt=True)
        assert text.startswith(prompt) and len(prompt) == spans[-1][0]
        if system_prompt:
            assert prompt.startswith(system_prompt + "\n\n")


def test_student_without_template_carries_its_training_prompt(student_without_template, data_file, tmp_path):
    from transformers import AutoTokenizer

    from trainer.data import Example
    from trainer.format import Formatter, read_prompt_format

    out = tmp_path / "out"
    train(tiny(data_file, out, model=student_without_template, system_prompt="Answer briefly."))
    fmt = read_prompt_format(out / "adapter")
    assert fmt["template"] == "alpaca" and fmt["system_prompt"] == "Answer briefly." and fmt["template_file"].is_file()
    saved = AutoTokenizer.from_pretrained(str(out / "adapter"))  # what PEFT / HF inference load
    assert saved.chat_template == fmt["template_file"].read_text()
    conv = [{"role": "user", "content": "Describe: the red house"}, {"role": "assistant", "content": "It is red."}]
    trained, spans, _ = Formatter(AutoTokenizer.from_pretrained(student_without_template), "Answer briefly.").render(
        Example(conv, "x"))
    prompt = saved.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True)
    assert trained[: spans[0][0]] == prompt  # the eval prompt is the training prompt, to the character


def test_chat_student_records_its_system_prompt(student, data_file, tmp_path):
    from trainer.format import read_prompt_format

    out = tmp_path / "out"
    train(tiny(data_file, out, model=student, system_prompt="Answer briefly."))
    fmt = read_prompt_format(out / "adapter")
    assert fmt == {"template": "model", "system_prompt": "Answer briefly.", "template_file": None}
    assert not (out / "adapter" / "sprout_chat_template.jinja").exists()
