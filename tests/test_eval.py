"""`sprout eval` pieces that need no server: eval-set formats, adapter checks, verifiable scoring,
the paired bootstrap, judge scoring and the judge's position-consistency check."""

from __future__ import annotations

import json

import pytest

from generator.errors import UserError
from generator.parsing import parse_judge_verdict
from trainer.eval_render import report_md, summary_lines
from trainer.evaluate import check_adapter, load_eval_set, overlap_warning
from trainer.judge import judge_pairs, judge_template, position_consistency, summarize
from trainer.stats import bootstrap_ci, paired_bootstrap
from trainer.verifiable_eval import load_verifiable_set, score_verifiable, summarize_verifiable, verifiable_set_path

FIXTURE = "tests/verifiable_eval_fixture.jsonl"


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


# --- paired bootstrap ---------------------------------------------------------------------------


def test_paired_bootstrap_identical_models_is_exactly_zero():
    scores = [1, 0, 1, 1, 0, 0, 1, 0]
    assert paired_bootstrap(scores, scores) == {"mean": 0.0, "ci95": [0.0, 0.0]}
    assert paired_bootstrap(scores, scores, weights=[2] * 8) == {"mean": 0.0, "ci95": [0.0, 0.0]}


def test_paired_bootstrap_clear_improvement_and_seed():
    base = [1] * 10 + [0] * 30                      # 25%
    student = [0] * 5 + [1] * 5 + [1] * 25 + [0] * 5  # 75%: worse on 5 prompts, better on 25
    d = paired_bootstrap(base, student)
    assert d["mean"] == 0.5 and 0 < d["ci95"][0] < 0.5 < d["ci95"][1] < 1
    assert paired_bootstrap(base, student, seed=3) == paired_bootstrap(base, student, seed=3)
    # The seed picks the resamples, never the mean.
    runs = [paired_bootstrap(base, student, seed=k) for k in range(4)]
    assert {r["mean"] for r in runs} == {0.5} and len({tuple(r["ci95"]) for r in runs}) > 1


def test_paired_bootstrap_pools_constraints():
    # Prompt-level rates would weigh each prompt once; constraint-level pools: (0 + 1 + 1) / 5.
    d = paired_bootstrap([1, 0, 2], [1, 1, 3], weights=[1, 1, 3])
    assert d["mean"] == 0.4 and d["ci95"][0] >= 0
    with pytest.raises(ValueError, match="each prompt"):
        paired_bootstrap([1], [1, 0])


# --- verifiable eval ----------------------------------------------------------------------------

FAKE_ANSWERS = {  # one per fixture prompt, with what the checks say in the comments
    "base": ["Cats are soft, small and furry.",         # comma: miss
             "Apple, Banana, Cherry",                   # capitals: miss
             "Rain is water falling from clouds.",      # 6 words: met
             "The sea is vast, blue and deep.",         # comma: miss; 7 words: met
             "Sure! Here it is:\nhello there friend"],  # capitals only in the first line: loose meets it
    "student": ["Cats are soft and small and furry.",
                "apple, banana, cherry",
                "Rain is water falling from clouds.",
                "The sea is vast and blue and deep.",
                "hello there, friend"],                 # lowercase met, comma missed
}


def test_verifiable_set_and_path():
    items = load_verifiable_set(FIXTURE)
    assert [it["id"] for it in items] == ["v1", "v2", "v3", "v4", "v5"]
    assert items[3]["messages"] == [{"role": "user", "content": items[3]["instruction"]}]
    assert items[3]["base_instruction"] == "Describe the sea." and len(items[3]["constraints"]) == 2
    assert len(load_verifiable_set(FIXTURE, limit=2)) == 2
    assert verifiable_set_path("none") is None and verifiable_set_path("") is None
    assert str(verifiable_set_path(FIXTURE)) == FIXTURE


@pytest.mark.parametrize("row, message", [
    ({"id": "x", "instruction": "Hi.", "constraints": [{"type": "rhymes", "params": {}, "text": "Rhyme."}]},
     r"line 2: field 'constraints\[0\].type': unknown constraint type 'rhymes'"),
    ({"id": "x", "instruction": "Hi.", "constraints": [{"type": "max_words", "params": {}, "text": "Be brief."}]},
     r"line 2: field 'constraints\[0\].params': not valid for max_words"),
    ({"id": "x", "instruction": "Hi.", "constraints": []}, r"line 2: field 'constraints' must be a non-empty list"),
    ({"id": "x", "constraints": [{"type": "lowercase"}]}, r"line 2: field 'instruction'"),
])
def test_verifiable_set_errors_name_line_and_field(tmp_path, row, message):
    f = tmp_path / "v.jsonl"
    good = open(FIXTURE).readline()
    f.write_text(good + json.dumps(row) + "\n")
    with pytest.raises(UserError, match=message):
        load_verifiable_set(f)


def test_verifiable_scoring_and_summary_numbers():
    rows = score_verifiable(load_verifiable_set(FIXTURE), FAKE_ANSWERS)
    assert rows[3]["strict"] == {"base": [False, True], "student": [True, True]}
    assert rows[4]["strict"]["base"] == [False, True] and rows[4]["loose"]["base"] == [True, True]
    assert rows[0]["answers"]["student"] == FAKE_ANSWERS["student"][0]
    v = summarize_verifiable(rows)
    assert (v["items"], v["constraints"]) == (5, 7)
    # base strict: prompt 3 only; constraints met 0+0+1+1+1 of 7. Loose adds prompt 5's lowercase.
    assert v["base"] == {"prompt_strict": 0.2, "constraint_strict": round(3 / 7, 4),
                         "prompt_loose": 0.4, "constraint_loose": round(4 / 7, 4)}
    assert v["student"] == {"prompt_strict": 0.8, "constraint_strict": round(6 / 7, 4),
                            "prompt_loose": 0.8, "constraint_loose": round(6 / 7, 4)}
    assert set(v["diff"]) == {"prompt_strict", "constraint_strict", "prompt_loose", "constraint_loose"}
    assert v["diff"]["prompt_strict"]["mean"] == 0.6 and v["diff"]["constraint_strict"]["mean"] == round(3 / 7, 4)
    assert v["diff"]["prompt_loose"]["mean"] == 0.4 and v["diff"]["constraint_loose"]["mean"] == round(2 / 7, 4)
    for d in v["diff"].values():
        assert d["ci95"][0] <= d["mean"] <= d["ci95"][1]
    assert v["by_type_strict"] == {
        "lowercase": {"constraints": 2, "base": 0.0, "student": 1.0},
        "max_words": {"constraints": 2, "base": 1.0, "student": 1.0},
        "no_commas": {"constraints": 3, "base": round(1 / 3, 4), "student": round(2 / 3, 4)}}
    json.dumps(v)  # summary.json material


def test_verifiable_without_a_student_has_no_difference():
    v = summarize_verifiable(score_verifiable(load_verifiable_set(FIXTURE), {"base": FAKE_ANSWERS["base"]}))
    assert "diff" not in v and "student" not in v and v["base"]["prompt_strict"] == 0.2


def _summary(verifiable: dict, judged: list[dict] | None) -> dict:
    s = {"items": 2, "model": "m", "adapter": "a", "base_reference_loss": 2.5, "student_reference_loss": 2.0,
         "verifiable": {**verifiable, "set": FIXTURE}}
    if judged:
        s.update(summarize(judged), judge="tiny-judge")
    return s


def test_printout_and_report_lead_with_the_verifiable_result():
    v = summarize_verifiable(score_verifiable(load_verifiable_set(FIXTURE), FAKE_ANSWERS))
    good = [{"verdicts": ["B", "A"], "score": 1.0}, {"verdicts": ["A", "B"], "score": 0.0},
            {"verdicts": ["B", "A"], "score": 1.0}]
    lines = summary_lines(_summary(v, good))
    assert lines[0].startswith("instruction following on 5 verifiable prompts (7 constraints")
    assert "student - base" in lines[1]
    strict = next(x for x in lines if x.strip().startswith("prompt-level, strict"))
    assert "20.0%" in strict and "80.0%" in strict and "+60.0 pts" in strict
    judge = next(i for i, x in enumerate(lines) if x.startswith("pairwise judge"))
    assert judge > lines.index(strict) and "student win rate 0.667" in lines[judge]
    md = report_md(_summary(v, good), [], score_verifiable(load_verifiable_set(FIXTURE), FAKE_ANSWERS))
    assert md.index("## Instruction following") < md.index("## Pairwise judge") < md.index("## Reference answers")
    assert "| prompt-level, strict | 20.0% | 80.0% | +60.0 pts |" in md
    assert "no_commas MISSED" in md and "lowercase met" in md


def test_uninformative_judge_is_said_plainly_not_headlined():
    v = summarize_verifiable(score_verifiable(load_verifiable_set(FIXTURE), FAKE_ANSWERS))
    always_a = [{"verdicts": ["A", "A"], "score": 0.5}] * 4
    s = _summary(v, always_a)
    lines = summary_lines(s)
    text = "\n".join(lines)
    assert "pairwise judge: NOT INFORMATIVE" in text and '"A" in 100% of its 8 verdicts' in text
    assert "uninformative raw number" in text and "student win rate" not in text
    md = report_md(s, [])
    assert '**pairwise judge: NOT INFORMATIVE' in md and "student win rate" not in md


# --- the judge's position consistency -------------------------------------------------------------


class FakeJudge:
    """A judge that reads the rendered prompt, as a real one does: `decide(a, b)` -> its reply."""

    def __init__(self, decide):
        self.decide = decide

    async def chat(self, messages, **params):
        import re

        from generator.client import Completion

        m = re.search(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\n", messages[-1]["content"], re.S)
        return Completion([self.decide(m[1], m[2])], ["stop"], 0, 0, "fake", "fake")


JUDGE_ITEMS = [{"instruction": f"Question {i}", "input": "", "base": f"plain answer {i}",
                "student": f"better answer {i}"} for i in range(6)]


def _judge(decide) -> dict:
    import asyncio

    return summarize(asyncio.run(judge_pairs(FakeJudge(decide), judge_template(), JUDGE_ITEMS, structured=False)))


def test_judge_always_answering_a_is_uninformative():
    s = _judge(lambda a, b: "A")
    assert s["win_rate"] == 0.5 and s["win_rate_ci95"] == [0.5, 0.5]  # the number that measures nothing
    assert s["judge_informative"] is False and '"A" in 100%' in s["judge_uninformative_reason"]
    c = s["judge_consistency"]
    assert (c["pairs"], c["position_driven"], c["consistent"], c["position_driven_rate"]) == (6, 6, 0, 1.0)
    assert c["verdict_share"] == {"A": 1.0, "B": 0.0, "tie": 0.0}


def test_judge_preferring_the_students_text_in_either_position():
    s = _judge(lambda a, b: "A" if a.startswith("better") else "B")
    assert s["win_rate"] == 1.0 and s["judge_informative"] is True and s["judge_uninformative_reason"] is None
    c = s["judge_consistency"]
    assert (c["consistent"], c["consistent_rate"], c["position_driven"]) == (6, 1.0, 0)
    assert c["verdict_share"] == {"A": 0.5, "B": 0.5, "tie": 0.0}
    assert _judge(lambda a, b: "A" if a.startswith("plain") else "B")["win_rate"] == 0.0  # and the base's


def test_judge_consistency_mixed_exact_numbers():
    judged = [
        {"verdicts": ["B", "A"], "score": 1.0},    # student won both orders: consistent
        {"verdicts": ["A", "B"], "score": 0.0},    # base won both orders: consistent
        {"verdicts": ["A", "A"], "score": 0.5},    # same letter: position-driven
        {"verdicts": ["B", "B"], "score": 0.5},    # same letter: position-driven
        {"verdicts": ["tie", "A"], "score": 0.75},  # mixed
        {"verdicts": ["identical", "identical"], "score": 0.5},  # never judged: not counted
        {"verdicts": [None, "A"], "score": 1.0},   # half a pair: a verdict, not a pair
        {"verdicts": [None, None], "score": None},
    ]
    c = position_consistency(judged)
    assert c == {"pairs": 5, "consistent": 2, "position_driven": 2, "mixed": 1, "consistent_rate": 0.4,
                 "position_driven_rate": 0.4, "verdicts": 11,
                 "verdict_share": {"A": round(6 / 11, 4), "B": round(4 / 11, 4), "tie": round(1 / 11, 4)}}
    s = summarize(judged)
    assert s["judge_informative"] is True and s["win_rate"] == round(4.25 / 7, 4)


@pytest.mark.parametrize("pairs, informative, reason", [
    # 5 x AA + 4 x BB + 1 x BA: letters balanced (A 55%), but 90% position-driven
    ([("A", "A")] * 5 + [("B", "B")] * 4 + [("B", "A")], False, "90% of the 10 pairs"),
    # 8 x AA + BA + AB: position-driven 80%, but "A" is 18 of 20 verdicts
    ([("A", "A")] * 8 + [("B", "A"), ("A", "B")], False, '"A" in 90% of its 20 verdicts'),
    # 8 x AA + BA + tie/tie: position-driven 80%, "A" 17 of 20 = 85%: just informative
    ([("A", "A")] * 8 + [("B", "A"), ("tie", "tie")], True, None),
    # always "tie": a win rate of exactly 0.5 that says nothing
    ([("tie", "tie")] * 6, False, '"tie" in 100%'),
])
def test_judge_informative_thresholds(pairs, informative, reason):
    s = summarize([{"verdicts": list(p), "score": 0.5} for p in pairs])
    assert s["judge_informative"] is informative
    assert (reason is None) == (s["judge_uninformative_reason"] is None)
    if reason:
        assert reason in s["judge_uninformative_reason"]


@pytest.mark.vllm
def test_served_base_and_student_answers_match_hf_generation(embedded_model, tmp_path):
    """Golden test for what an eval gets silently wrong: the answers labelled "base" and "student"
    must be the base model's and the adapter's. vLLM 0.32 on CPU applied the adapter to base
    requests batched with adapter requests (base == student on every prompt); the eval answers
    one model at a time, and here both are checked against plain HF greedy generation."""
    import asyncio

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from generator.client import TeacherClient
    from generator.server import ServeConfig, VLLMServer, free_port
    from trainer.evaluate import answer_each_model
    from trainer.verifiable_eval import load_verifiable_set, verifiable_set_path

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(embedded_model)
    model = AutoModelForCausalLM.from_pretrained(embedded_model, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj",
                                                                                     "up_proj", "down_proj"],
                                                  init_lora_weights=False))
    with torch.no_grad():  # a visible but gentle change: random A and B, scaled down
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)
    vitems = load_verifiable_set(verifiable_set_path(None), 6)
    items = vitems[:0]

    def hf(m):
        out = []
        for it in vitems:
            ids = tok.apply_chat_template(it["messages"], add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]
            with torch.no_grad():
                g = m.generate(ids, max_new_tokens=24, do_sample=False)
            out.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return out

    hf_student = hf(peft_model)
    with peft_model.disable_adapter():
        hf_base = hf(peft_model)
    assert sum(b != s for b, s in zip(hf_base, hf_student)) >= 4  # the adapter changes most answers

    async def ask(url, base_name):
        async with TeacherClient(url, model=base_name) as client:
            return await answer_each_model(client, items, vitems, [base_name, "student"], 24)

    with VLLMServer(ServeConfig(port=free_port(), lora=[f"student={adapter}"])) as srv:
        _, served = asyncio.run(ask(srv.base_url, srv.model_name))
    for name, ref in ((srv.model_name, hf_base), ("student", hf_student)):
        same = sum(a[:40] == r[:40] for a, r in zip(served[name], ref))
        assert same >= len(ref) - 1, (name, served[name], ref)


@pytest.mark.slow
def test_served_student_without_template_gets_its_training_prompt(student_without_template, tmp_path):
    """Golden test for train/inference format drift: a student whose base has no chat template is
    trained on the Alpaca prompt; served the way `sprout serve` and `sprout eval` serve it, vLLM's
    chat endpoint must tokenize a conversation into exactly the training prompt's tokens."""
    import httpx
    from transformers import AutoTokenizer

    from generator.server import ServeConfig, VLLMServer, free_port
    from tests.test_train import make_rows
    from trainer.cli import _student_chat_template
    from trainer.config import TrainConfig
    from trainer.data import Example
    from trainer.format import Formatter
    from trainer.train import train

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(8)))
    train(TrainConfig(data=str(data), out=str(tmp_path / "run"), model=student_without_template, max_steps=1,
                      max_length=64, lora_r=4, lora_alpha=8, batch_size=4, eval_fraction=0.0, save_every=0,
                      progress=False, system_prompt="Answer in one line."))
    cfg = ServeConfig(model=student_without_template, port=free_port(), lora=[f"student={tmp_path / 'run' / 'adapter'}"])
    _student_chat_template(cfg)
    assert "--chat-template" in cfg.extra_args

    tok = AutoTokenizer.from_pretrained(student_without_template)
    conv = [{"role": "user", "content": "Describe: the red house"}, {"role": "assistant", "content": "It is red."}]
    text, spans, _ = Formatter(tok, "Answer in one line.").render(Example(conv, "x"))
    want = tok(text[: spans[0][0]], add_special_tokens=True)["input_ids"]
    with VLLMServer(cfg) as srv:
        root = srv.base_url.removesuffix("/v1")
        for model in ("student", srv.model_name):  # one template per server: the base is asked the same way
            got = httpx.post(f"{root}/tokenize", json={"model": model, "messages": conv[:1],
                                                        "add_generation_prompt": True}, timeout=60).json()
            assert got["tokens"] == want, (model, tok.decode(got["tokens"]), text[: spans[0][0]])
        reply = httpx.post(f"{srv.base_url}/chat/completions", timeout=120, json={
            "model": "student", "messages": conv[:1], "max_tokens": 8, "temperature": 0}).json()
        assert reply["choices"][0]["message"]["content"] is not None


def test_eval_hands_vllm_settings_to_the_server_it_starts(monkeypatch, tmp_path, embedded_model):
    """--max-model-len and --vllm-arg reach the vLLM server eval starts (as sprout serve's would)."""
    import argparse

    from generator import server
    from generator.config import load_config
    from trainer.evaluate import EvalConfig, add_eval_args, evaluate

    seen = {}

    class Started(Exception):
        pass

    class FakeServer:
        def __init__(self, cfg, *a, **kw):
            seen["cfg"] = cfg

        def __enter__(self):
            raise Started

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(server, "VLLMServer", FakeServer)
    p = argparse.ArgumentParser()
    add_eval_args(p)
    args = p.parse_args(["--out", str(tmp_path / "e"), "--max-model-len", "4096",
                         "--vllm-arg=--gpu-memory-utilization=0.5", "--vllm-arg=--tensor-parallel-size=2"])
    cfg = load_config(EvalConfig, None, vars(args))
    with pytest.raises(Started):
        evaluate(cfg)
    assert seen["cfg"].max_model_len == 4096
    assert seen["cfg"].extra_args == ["--gpu-memory-utilization=0.5", "--tensor-parallel-size=2"]


def test_demo_three_way_joins_two_evals_and_compares_dpo_with_sft(tmp_path):
    """`sprout demo --dpo`: base / SFT from the SFT eval, SFT+DPO from the second eval, matched by
    prompt id; the difference is DPO minus SFT (not minus base), paired."""
    from trainer.demo import _dpo_lines, three_way

    items = load_verifiable_set(FIXTURE)
    # the DPO student answers like the base on every prompt: DPO - SFT = base - student
    sft = score_verifiable(items, FAKE_ANSWERS)
    dpo = score_verifiable(items, {"base": FAKE_ANSWERS["base"], "student": FAKE_ANSWERS["base"]})
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))
    (tmp_path / "dpo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(dpo[1:])))  # order, a gap
    v = three_way(tmp_path / "sft.jsonl", tmp_path / "dpo.jsonl")
    assert v["items"] == 4 and set(v["by_type_strict"]["no_commas"]) == {"constraints", "base", "sft", "dpo"}
    assert v["dpo"] == v["base"] and v["sft"]["prompt_strict"] == 0.75
    # prompts 2-5: SFT meets every prompt but one, DPO (= base) only prompt 3
    assert v["diff"]["prompt_strict"]["mean"] == round(v["dpo"]["prompt_strict"] - v["sft"]["prompt_strict"], 4) < 0
    line = _dpo_lines({"pairs": 7, "verifiable": v, "eval_reward_accuracy": 0.5})
    assert "DPO on 7 preference pairs (held-out reward accuracy 0.50)" in line and "DPO-SFT -0.500" in line
    assert "not run (no preference pairs" in _dpo_lines({"pairs": 0, "note": "no preference pairs (x)"})
