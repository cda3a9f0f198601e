"""`sprout eval` pieces that need no server: eval-set formats, adapter checks, judge scoring."""

from __future__ import annotations

import json

import pytest

from generator.errors import UserError
from generator.parsing import parse_judge_verdict
from trainer.evaluate import check_adapter, load_eval_set, overlap_warning
from trainer.judge import bootstrap_ci, summarize


def test_eval_set_formats(tmp_path):
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Add 2 and 2.", "input": "", "output": "4"}]))
    si = tmp_path / "s.jsonl"
    si.write_text(json.dumps({"id": "t1", "instruction": "Sum the numbers.", "is_classification": False,
                              "instances": [{"input": "1, 2", "output": "3"}, {"input": "5", "output": "5"}]}) + "\n")
    msgs = tmp_path / "m.jsonl"
    msgs.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi there"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")
    assert load_eval_set(alpaca)[0]["reference"] == "4"
    item = load_eval_set(si)[0]  # Self-Instruct: the first instance is the reference
    assert (item["input"], item["reference"]) == ("1, 2", "3")
    assert item["messages"] == [{"role": "user", "content": "Sum the numbers.\n\n1, 2"}]
    m = load_eval_set(msgs)[0]
    assert m["reference"] == "Hello!" and m["messages"] == [{"role": "user", "content": "Hi there"}]
    assert len(load_eval_set("seeds/eval_set.jsonl", limit=5)) == 5


def test_unknown_eval_format_is_a_clear_error(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text('{"question": "what?", "answer": "that"}\n')
    with pytest.raises(UserError, match=r"x\.jsonl line 1: unknown eval set format"):
        load_eval_set(f)


def test_missing_adapter(tmp_path, embedded_model):
    with pytest.raises(UserError, match="adapter_config.json"):
        check_adapter(str(tmp_path / "nope"), embedded_model)


def test_adapter_for_another_base_model(tmp_path, embedded_model):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    other = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4, vocab_size=256))
    get_peft_model(other, LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path / "ad")
    with pytest.raises(UserError, match="another base model"):
        check_adapter(str(tmp_path / "ad"), embedded_model)


def test_judge_verdict_parsing():
    assert parse_judge_verdict('{"winner": "B"}', structured=True).items == ["B"]
    assert parse_judge_verdict("tie - both fine").items == ["tie"]
    assert parse_judge_verdict("I cannot decide").items == []


def test_win_rate_both_orders_and_skips():
    judged = [
        {"verdicts": ["B", "A"], "score": 1.0},   # student won in both orders
        {"verdicts": ["B", "B"], "score": 0.5},   # position bias: cancels out
        {"verdicts": [None, "tie"], "score": 0.5},
        {"verdicts": [None, None], "score": None},  # no verdict: skipped, not a loss
    ]
    s = summarize(judged)
    assert s["win_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert s["skipped_items"] == 1 and s["judged_items"] == 3 and s["verdicts_missing"] == 3
    lo, hi = s["win_rate_ci95"]
    assert 0.5 <= lo <= s["win_rate"] <= hi <= 1.0


def test_judge_with_no_verdict_at_all_is_an_error():
    with pytest.raises(UserError, match="no readable verdict"):
        summarize([{"verdicts": [None, None], "score": None}])


def test_bootstrap_interval_narrows_with_more_items():
    few, many = bootstrap_ci([0.0, 1.0] * 5), bootstrap_ci([0.0, 1.0] * 200)
    assert few[1] - few[0] > many[1] - many[0] > 0


def test_overlap_warning(tmp_path):
    items = load_eval_set("seeds/eval_set.jsonl", limit=3)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"instruction": t, "input": "", "output": "x"}) + "\n"
                             for t in [items[0]["instruction"], "Completely unrelated words about cooking pasta."]))
    w = overlap_warning(items, str(train))
    assert w and "1 of 2 training examples" in w


def test_judge_pairs_both_orders_against_a_server_without_verdicts():
    """A judge whose replies hold no verdict: items are skipped, and all skipped is an error.
    Identical answers are ties and cost no request."""
    import asyncio

    from generator.client import ClientConfig, TeacherClient
    from tests.fault_server import FaultServer
    from trainer.judge import judge_pairs, judge_template

    items = [{"instruction": "Say hi.", "input": "", "base": "hi", "student": "hi"},
             {"instruction": "Add 1 and 1.", "input": "", "base": "2", "student": "two"}]

    async def go(url):
        async with TeacherClient(url, model="fake-model", cfg=ClientConfig(timeout=5)) as c:
            return await judge_pairs(c, judge_template(), items, structured=False)

    with FaultServer() as srv:  # replies "answer 0": not A, B or tie
        judged = asyncio.run(go(srv.url))
    assert len(srv.requests) == 2  # two orders of the second item only
    assert judged[0] == {"verdicts": ["identical", "identical"], "score": 0.5}
    assert judged[1] == {"verdicts": [None, None], "score": None}
    s = summarize(judged)
    assert s["skipped_items"] == 1 and s["identical_answers"] == 1 and s["win_rate"] == 0.5
