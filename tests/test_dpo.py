"""DPO: preference export from a run's candidates, the preference reader, the loss and log-probs
against hand computations, the reference policy, learning, and exact resume (tiny 2-layer student)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainer.cli import main
from generator.errors import UserError
from trainer.config import TrainConfig
from trainer.train import Hooks, train

# -- export ------------------------------------------------------------------------------------------


def cand(text, relevance, reasons=()):
    return {"text": text, "finish_reason": "stop", "scores": {"relevance": relevance}, "reasons": list(reasons)}


RECORDS = [
    # a failed candidate is the worst, whatever its relevance
    {"id": "r0", "instruction": "Name a fruit.", "input": "", "output": "Apple.", "selected": 1,
     "candidates": [cand("Banana is nice.", 0.9, ["constraint_failed"]), cand("Apple.", 0.6), cand("Pear.", 0.45)]},
    # passing ones only: 0.8 vs 0.75 is within the margin, 0.5 is not
    {"id": "r1", "instruction": "Sum 2 and 3.", "input": "Use digits.", "output": "5", "selected": 0,
     "candidates": [cand("5", 0.8), cand("five", 0.75), cand("It is 5 I think", 0.5)]},
    {"id": "r2", "instruction": "Say hi.", "input": "", "output": "Hi", "selected": 0,
     "candidates": [cand("Hi", 0.5), cand("Hello", 0.45)]},  # within the margin: skipped
    {"id": "r3", "instruction": "One answer.", "input": "", "output": "x", "selected": 0,
     "candidates": [cand("x", 1.0)]},  # one candidate: skipped
]


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return run


def test_export_preference_pairs(run_dir, tmp_path, capsys):
    out = tmp_path / "pref.jsonl"
    assert main(["export", str(run_dir), "--format", "preference", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 preference pairs" in printed and "skipped 2 records" in printed
    assert "fewer_than_2_candidates: 1" in printed and "no_worse_candidate: 1" in printed
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["r0", "r1"]
    assert list(rows[0])[:4] == ["id", "prompt", "chosen", "rejected"]
    assert {"prompt", "chosen", "rejected", "scores_chosen", "scores_rejected", "id"} <= set(rows[0])
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"]) == ("Name a fruit.", "Apple.", "Banana is nice.")
    assert rows[0]["scores_rejected"] == {"relevance": 0.9} and rows[0]["rejected_reasons"] == ["constraint_failed"]
    assert (rows[1]["prompt"], rows[1]["chosen"], rows[1]["rejected"]) == ("Sum 2 and 3.\n\nUse digits.", "5",
                                                                          "It is 5 I think")
    # a margin of 0.05 lets the close ones pair too; the worst is still the lowest score
    assert main(["export", str(run_dir), "--format", "preference", "--out", str(out), "--pair-margin", "0.05"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["id"], r["rejected"]) for r in rows] == [("r0", "Banana is nice."), ("r1", "It is 5 I think"),
                                                        ("r2", "Hello")]


def test_export_preference_messages_and_random(run_dir, tmp_path):
    out = tmp_path / "pref.jsonl"
    assert main(["export", str(run_dir), "--format", "preference-messages", "--out", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[1])
    assert row["prompt"] == [{"role": "user", "content": "Sum 2 and 3.\n\nUse digits."}]  # TRL conversational
    assert row["chosen"] == [{"role": "assistant", "content": "5"}]
    assert row["rejected"] == [{"role": "assistant", "content": "It is 5 I think"}]
    picks = set()
    for seed in range(12):
        assert main(["export", str(run_dir), "--format", "preference", "--out", str(out), "--rejected", "random",
                     "--seed", str(seed)]) == 0
        picks.add(json.loads(out.read_text().splitlines()[0])["rejected"])
    assert picks == {"Banana is nice.", "Pear."}  # r0's two worse candidates; never the chosen one
    again = out.read_text()
    main(["export", str(run_dir), "--format", "preference", "--out", str(out), "--rejected", "random", "--seed", "11"])
    assert out.read_text() == again  # seeded


# -- the preference reader ------------------------------------------------------------------------


def test_preference_reader_forms_and_errors(tmp_path, capsys):
    from trainer.data import load_pairs

    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"}) + "\n" + json.dumps(
        {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "assistant", "content": "no"}]}) + "\n")
    a, b = load_pairs(good)
    assert a.chosen.messages == b.chosen.messages == [{"role": "user", "content": "Q?"},
                                                      {"role": "assistant", "content": "yes"}]
    assert a.rejected.alpaca == ("Q?", "", "no") and b.rejected.alpaca is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"}) + "\n"
                   + json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": 3}) + "\n")
    with pytest.raises(UserError, match=rf"{bad} line 2: field 'rejected': expected a string or a list"):
        load_pairs(bad)
    rc = main(["train", "--method", "dpo", "--data", str(bad), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and f"{bad} line 2: field 'rejected'" in err
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
    with pytest.raises(UserError, match="line 1: no 'chosen'/'rejected' fields.*--format preference"):
        load_pairs(sft)
    (tmp_path / "e.jsonl").write_text(json.dumps({"prompt": "Q", "chosen": " ", "rejected": "no"}) + "\n")
    with pytest.raises(UserError, match="line 1: field 'chosen' is empty"):
        load_pairs(tmp_path / "e.jsonl")


# -- loss and log-probs ------------------------------------------------------------------------------


def test_dpo_loss_matches_hand_computation():
    from trainer.dpo import dpo_loss

    pc, pr = torch.tensor([-10.0, -7.0]), torch.tensor([-12.0, -5.0])
    rc, rr = torch.tensor([-11.0, -6.0]), torch.tensor([-11.5, -6.5])
    beta = 0.5
    h = [(-10 + 11) - (-12 + 11.5), (-7 + 6) - (-5 + 6.5)]  # 1.5, -2.5
    losses, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta, "sigmoid")
    expect = [math.log(1 + math.exp(-beta * x)) for x in h]  # -log sigmoid(beta h)
    assert losses.tolist() == pytest.approx(expect, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.5, -0.5]) and rejected.tolist() == pytest.approx([-0.25, 0.75])
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta, "ipo")
    assert losses.tolist() == pytest.approx([(x - 1 / (2 * beta)) ** 2 for x in h], rel=1e-6)  # [0.25, 12.25]


@pytest.fixture(scope="module")
def lm(student):
    from trainer.model import CausalLMLoss, load_student

    torch.manual_seed(0)
    model, tok, stop_ids = load_student(student, torch.device("cpu"), torch.float32, lora_r=4, lora_alpha=8,
                                        lora_dropout=0.0, target_modules=None, gradient_checkpointing=False)
    return CausalLMLoss(model), tok, stop_ids


def test_sequence_logp_is_the_sum_over_response_tokens(lm, student):
    from transformers import AutoModelForCausalLM

    from trainer.data import to_pair
    from trainer.dpo import collate_pairs, encode_pairs, sequence_logps
    from trainer.format import IGNORE, Formatter

    loss, tok, stop_ids = lm
    pair = to_pair({"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "I don't know."}, "x")
    [enc], _ = encode_pairs(Formatter(tok, None, stop_ids), [pair], 64, "truncate")
    ids, labels = enc.chosen.input_ids, enc.chosen.labels
    supervised = [t for t in labels if t != IGNORE]
    assert tok.decode(supervised) == "Blue.<|im_end|>"  # the answer and end-of-turn, no prompt
    batch = collate_pairs([enc], tok.pad_token_id)
    with torch.no_grad():
        got = sequence_logps(loss, batch["input_ids"], batch["attention_mask"], batch["labels"])
    base = AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = base(torch.tensor([ids])).logits[0].log_softmax(-1)
    hand = sum(float(logits[t - 1, ids[t]]) for t in range(1, len(ids)) if labels[t] != IGNORE)
    assert float(got[0]) == pytest.approx(hand, rel=1e-5)  # LoRA B starts at zero: the base model


def test_reference_with_adapter_off_is_the_base_model(lm, student):
    from trainer.data import to_pair
    from trainer.dpo import compute_reference, encode_pairs, sequence_logps
    from trainer.format import Formatter
    from trainer.model import CausalLMLoss

    loss, tok, stop_ids = lm
    pairs = [to_pair({"prompt": f"Say {w}.", "chosen": w, "rejected": "No."}, "x") for w in ("red", "green blue")]
    enc, _ = encode_pairs(Formatter(tok, None, stop_ids), pairs, 64, "truncate")
    with torch.no_grad():  # an adapter that changes the outputs
        for n, p in loss.model.named_parameters():
            if "lora_B" in n:
                p.add_(0.05)
    try:
        compute_reference(loss, enc, 2, tok.pad_token_id, "cpu", adapter_off=True)
        from transformers import AutoModelForCausalLM

        base = CausalLMLoss(AutoModelForCausalLM.from_pretrained(student, dtype=torch.float32).eval())
        for e in enc:
            for side, ref in ((e.chosen, e.ref_chosen), (e.rejected, e.ref_rejected)):
                t = lambda x: torch.tensor([x])  # noqa: E731
                with torch.no_grad():
                    want = float(sequence_logps(base, t(side.input_ids), t([1] * side.n_tokens), t(side.labels))[0])
                assert ref == pytest.approx(want, rel=1e-5)
        off = [(e.ref_chosen, e.ref_rejected) for e in enc]
        compute_reference(loss, enc, 2, tok.pad_token_id, "cpu", adapter_off=False)  # the adapter does matter
        assert [(e.ref_chosen, e.ref_rejected) for e in enc] != off
    finally:
        with torch.no_grad():
            for n, p in loss.model.named_parameters():
                if "lora_B" in n:
                    p.zero_()


# -- training ---------------------------------------------------------------------------------------

PAIRS = [{"prompt": f"What colour is the {thing}?", "chosen": f"The {thing} is {colour}.",
          "rejected": "I don't know, sorry."}
         for thing, colour in (("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"))]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    return path


def tiny_dpo(data, out, student, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model=student, method="dpo", max_length=64, lora_r=4, lora_alpha=8,
                lora_dropout=0.0, batch_size=4, max_steps=5, eval_fraction=0.0, save_every=0, eval_every=0,
                warmup_ratio=0.0, progress=False, lr=5e-3, schedule="constant", beta=0.1, dtype="float32")
    return TrainConfig(**{**base, **kw})


def records(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_dpo_learns_and_reference_stays(student, pairs_file, tmp_path):
    from trainer.dpo import compute_reference
    from trainer.model import CausalLMLoss

    seen = {}

    def on_data(train_enc, eval_enc):
        seen["pairs"], seen["ref0"] = train_enc, [(p.ref_chosen, p.ref_rejected) for p in train_enc]

    summary = train(tiny_dpo(pairs_file, tmp_path / "a", student, eval_data=str(pairs_file)),
                    Hooks(on_model=lambda m: seen.update(model=m), on_data=on_data))
    rs = [r for r in records(tmp_path / "a") if "loss" in r]
    assert len(rs) == 5 and {"reward_margin", "reward_accuracy", "logps_chosen", "logps_rejected"} <= set(rs[0])
    assert rs[0]["reward_margin"] == 0.0 and rs[0]["loss"] == pytest.approx(math.log(2), rel=1e-5)  # policy == ref
    assert rs[-1]["reward_margin"] > 0.05 and rs[-1]["reward_accuracy"] == 1.0
    assert rs[-1]["loss"] < rs[0]["loss"]
    assert summary["method"] == "dpo" and summary["final_reward_accuracy"] == 1.0
    evals = [r for r in records(tmp_path / "a") if "eval_loss" in r]
    assert len(evals) == 1 and evals[0]["eval_reward_accuracy"] == 1.0 and evals[0]["eval_loss"] < math.log(2)
    # the cache never changed, and it still equals the (frozen) base model's log-probs
    assert [(p.ref_chosen, p.ref_rejected) for p in seen["pairs"]] == seen["ref0"]
    import copy

    fresh = copy.deepcopy(seen["pairs"])
    compute_reference(CausalLMLoss(seen["model"]), fresh, 4, 2, seen["model"].device, adapter_off=True)
    for p, (c, r) in zip(fresh, seen["ref0"]):
        assert (p.ref_chosen, p.ref_rejected) == pytest.approx((c, r), rel=1e-5)
    # the DPO adapter can seed another run: --init-adapter, which is then the reference
    seen2 = {}
    train(tiny_dpo(pairs_file, tmp_path / "b", student, max_steps=1, init_adapter=str(tmp_path / "a" / "adapter")),
          Hooks(on_data=lambda t, e: seen2.update(ref=[(p.ref_chosen, p.ref_rejected) for p in t])))
    first = records(tmp_path / "b")[0]
    assert first["reward_margin"] == pytest.approx(0.0, abs=1e-4)  # starts at its own reference
    assert seen2["ref"] != seen["ref0"]


def test_dpo_resume_is_exact(student, pairs_file, tmp_path):
    cfg = dict(max_steps=4, save_every=2, batch_size=2, lora_dropout=0.1, dpo_loss="ipo")

    class Interrupt(Exception):
        pass

    def crash(step, record):
        if step == 3:
            raise Interrupt

    train(tiny_dpo(pairs_file, tmp_path / "a", student, **cfg))
    with pytest.raises(Interrupt):
        train(tiny_dpo(pairs_file, tmp_path / "b", student, **cfg), Hooks(on_step=crash))
    train(tiny_dpo(pairs_file, tmp_path / "b", student, resume=True, **cfg))
    keys = ("step", "loss", "reward_margin", "reward_accuracy", "logps_chosen")
    a = [[r[k] for k in keys] for r in records(tmp_path / "a") if "loss" in r]
    b = [[r[k] for k in keys] for r in records(tmp_path / "b") if "loss" in r]
    assert [r[0] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert rb == pytest.approx(ra, rel=1e-5, abs=1e-6)


def test_dpo_config_checks(tmp_path):
    from trainer.config import check

    base = dict(data="d", out="o")
    with pytest.raises(UserError, match="--beta must be positive"):
        check(TrainConfig(**base, method="dpo", beta=0))
    with pytest.raises(UserError, match="--dpo-loss 'hinge'"):
        check(TrainConfig(**base, method="dpo", dpo_loss="hinge"))
    with pytest.raises(UserError, match="--method 'ppo'"):
        check(TrainConfig(**base, method="ppo"))
    with pytest.raises(UserError, match="--init-adapter .*no adapter_config.json"):
        check(TrainConfig(**base, init_adapter=str(tmp_path)))
