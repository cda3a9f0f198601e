"""The whole generation pipeline against a scripted teacher (tests/fault_server.py): budgets,
per-request failures, responses and selection, rejection bookkeeping, resume -- deterministic,
no model, a few seconds each."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from generator.client import TeacherError
from generator.errors import UserError
from generator.gen_config import GenerateConfig
from generator.generate import generate
from generator.verifiers import check_all
from tests.fault_server import FaultServer

SEEDS = str(Path(__file__).resolve().parents[1] / "seeds" / "test_seeds.jsonl")

# Our own minimal templates: each prompt names its stage, so the script can answer by stage
# whatever the shipped prompts say.
TEMPLATES = {
    "alpaca": ("alpaca_tasks", "STAGE=alpaca tasks={{ num_tasks }}\n{% for ex in examples %}{{ loop.index }}. "
               "Instruction: {{ ex.instruction }}\n{{ loop.index }}. Input: {{ ex.input }}\n{{ loop.index }}. "
               "Output: {{ ex.output }}\n{% endfor %}"),
    "bootstrap": ("numbered_instructions", "STAGE=bootstrap\n{% for ex in examples %}{{ loop.index }}. "
                  "{{ ex.instruction }}\n{% endfor %}"),
    "classify": ("yes_no", "STAGE=classify {{ instruction }}"),
    "instances_input_first": ("instances", "STAGE=instances {{ instruction }}"),
    "instances_output_first": ("labeled_instances", "STAGE=labels {{ instruction }}"),
    "respond": ("response", "STAGE=respond {{ instruction }}{% if input %}\nINPUT={{ input }}{% endif %}"),
}

WORDS = [f"{a}{b}" for a in ("zo", "ka", "mi", "ru", "te", "lo", "vi", "sa") for b in ("ber", "dun", "fip", "gol",
                                                                                        "hax", "jor", "kiv", "lum")]
# candidate answers: the lowercase comma-free short one meets many constraint types, the others few
ANSWERS = ["Sure, Here Is A Long Answer, With Commas, And Capitals Everywhere In It.",
           "a short plain answer",
           "A second answer, with a comma.",
           '"quoted answer here"']


@pytest.fixture
def templates(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    for stage, (parser, body) in TEMPLATES.items():
        (folder / f"{stage}.jinja").write_text(f"{{#- parser: {parser} -#}}\n{{% block user %}}{body}{{% endblock %}}\n")
    return str(folder)


class Script:
    """Replies by stage; every instruction it invents is new (distinct made-up words)."""

    def __init__(self, tasks_per_reply: int = 4, refuse: dict | None = None, answers=ANSWERS):
        self.counter = itertools.count()
        self.rng = random.Random(0)
        self.tasks_per_reply = tasks_per_reply
        self.refuse = refuse or {}  # {(stage, nth request of that stage): status}
        self.seen = Counter()
        self.answers = answers

    def _instruction(self) -> str:
        return "Describe " + " ".join(self.rng.sample(WORDS, 5)) + f" item{next(self.counter)} briefly."

    def __call__(self, kind: str, req: dict):
        text = req["messages"][-1]["content"] if kind == "chat" else req["prompt"]
        stage = text.split()[0].split("=")[1]
        self.seen[stage] += 1
        if (stage, self.seen[stage]) in self.refuse:
            return self.refuse[(stage, self.seen[stage])]
        n = int(req.get("n") or 1)
        if stage == "alpaca":
            k = text.count("Instruction:")
            blocks = [f"{k + i + 1}. Instruction: {self._instruction()}\n{k + i + 1}. Input: <noinput>\n"
                      f"{k + i + 1}. Output: listed output {i}" for i in range(self.tasks_per_reply)]
            return "\n###\n".join(blocks)
        if stage == "bootstrap":
            return "\n".join(f"{i + 1}. {self._instruction()}" for i in range(4))
        if stage == "classify":
            return "Yes" if "item3 " in text or "item7 " in text else "No"
        if stage == "instances":
            return "Example 1\nInput: some text here\nOutput: some text here\nExample 2\nInput: first input\nOutput: ok"
        if stage == "labels":
            return "Class label: alpha\nInput: an alpha thing\nClass label: beta\nInput: a beta thing"
        return [self.answers[i % len(self.answers)] for i in range(n)]


def _cfg(tmp_path, url, templates, **kw) -> GenerateConfig:
    base = dict(out=str(tmp_path / "run"), seeds=SEEDS, teacher_url=url, templates=templates, num_instructions=6,
                concurrency=8, responses=4, constraints=0.0, structured="text")
    return GenerateConfig(**{**base, **kw})


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _check_bookkeeping(run: Path) -> dict:
    """stats.json's rejection counts are exactly the rows of rejected.jsonl, per reason."""
    stats = json.loads((run / "stats.json").read_text())
    rows = Counter(r["reason"] for r in _rows(run / "rejected.jsonl"))
    assert stats["rejections"] == dict(rows)
    records = _rows(run / "data.jsonl")
    assert stats["records"] == len(records)
    assert stats["kept_instructions"] == len({r["instruction_id"] for r in records})
    # what every session spent is in usage.jsonl, group by group: the totals survive kill -9
    usage = _rows(run / "usage.jsonl")
    for key in ("requests", "completion_tokens", "prompt_tokens"):
        assert sum(u.get(key, 0) for u in usage) == stats[key], key
    # ... and split by stage: every token is some stage's, and the split survives sessions too
    by_stage = stats["usage_by_stage"]
    for key in ("completion_tokens", "prompt_tokens"):
        assert sum(s[key] for s in by_stage.values()) == stats[key], key
    for stage, spent in by_stage.items():
        for key, value in spent.items():
            assert sum(u.get("by_stage", {}).get(stage, {}).get(key, 0) for u in usage) == value, (stage, key)
    return stats


def test_alpaca_with_responses_keeps_a_checked_answer(tmp_path, templates):
    script = Script()
    with FaultServer(script=script) as srv:
        # the 4 scripted answers meet about a quarter of the constraint types drawn, and which
        # instruction draws which depends on request order: the default budget (440) ran out at 5
        # of 6 kept in about 1 run in 5, so the budget is raised, not the check
        stats = generate(_cfg(tmp_path, srv.url, templates, constraints=1.0, max_constraints=1, max_requests=3000))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert stats["kept_instructions"] == 6
    for r in records:
        assert len(r["candidates"]) == 4 and r["constraints"]
        assert r["instruction"].startswith(r["base_instruction"]) and r["instruction"] != r["base_instruction"]
        assert all(check_all(r["output"], r["constraints"]))
        cands = r["candidates"]
        ok = [i for i, c in enumerate(cands) if not c["reasons"]]  # the passing one most like the others
        best = max(ok, key=lambda i: (cands[i]["scores"]["consensus"], -i))
        assert r["selected"] == best and r["output"] == cands[best]["text"]
        assert r["output"] != "listed output 0"  # the list's own output is replaced by a response
    _check_bookkeeping(tmp_path / "run")
    assert stats["responses"]["candidates"] >= 24


def test_responses_zero_keeps_the_listed_outputs(tmp_path, templates):
    with FaultServer(script=Script()) as srv:
        generate(_cfg(tmp_path, srv.url, templates, responses=0))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert len(records) == 6 and all(r["output"].startswith("listed output") for r in records)
    assert not any("candidates" in r for r in records)


def test_no_passing_candidate_drops_the_instance_and_counts_it(tmp_path, templates):
    # every candidate is cut by the length limit: nothing may be kept, everything is counted
    script = Script(answers=[("a cut answer that stops mid", "length")])
    with FaultServer(script=script) as srv:
        with pytest.raises(UserError, match="stopped after"):
            generate(_cfg(tmp_path, srv.url, templates, num_instructions=2, max_requests=12))
    run = tmp_path / "run"
    assert _rows(run / "data.jsonl") == []
    stats = _check_bookkeeping(run)
    assert stats["rejections"]["cut_by_length_limit"] >= 1
    assert stats["rejections"]["no_valid_response"] >= 1


def test_one_bad_request_is_one_rejection(tmp_path, templates):
    script = Script(refuse={("alpaca", 1): 400, ("respond", 2): 422})
    with FaultServer(script=script) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates))
    assert stats["kept_instructions"] == 6
    assert stats["rejections"]["bad_request"] == 2
    rows = [r for r in _rows(tmp_path / "run" / "rejected.jsonl") if r["reason"] == "bad_request"]
    assert {r["status"] for r in rows} == {400, 422} and all("scripted refusal" in r["message"] for r in rows)
    _check_bookkeeping(tmp_path / "run")


def test_unauthorized_ends_the_run_with_records_intact(tmp_path, templates):
    script = Script(refuse={("alpaca", 3): 401})
    with FaultServer(script=script) as srv:
        with pytest.raises(TeacherError, match="401"):
            generate(_cfg(tmp_path, srv.url, templates, num_instructions=40, concurrency=1))
    records = _rows(tmp_path / "run" / "data.jsonl")  # every line parses: nothing torn
    assert records and len({r["instruction_id"] for r in records}) <= 40


def _estimate(text: str) -> int:
    return -(-len(text.encode()) // 3) + 8


def test_context_budget_lowers_max_tokens_and_drops_examples(tmp_path, templates):
    window = 360
    with FaultServer(script=Script(), max_model_len=window) as srv:
        generate(_cfg(tmp_path, srv.url, templates, examples_per_prompt=6, max_tokens=1536, responses=0))
        bodies = list(srv.bodies)
    alpaca = [b for b in bodies if b["messages"][-1]["content"].startswith("STAGE=alpaca")]
    assert alpaca
    for b in alpaca:  # the stated estimate: prompt + completion always fit the window
        prompt = sum(_estimate(m["content"]) for m in b["messages"]) + 8
        assert prompt + b["max_tokens"] <= window
        assert 128 <= b["max_tokens"] < 1536
    shown = [b["messages"][-1]["content"].count("Instruction:") for b in alpaca]
    assert max(shown) < 6  # six examples never fit: fewer were shown


def test_prompt_that_cannot_fit_is_counted_not_sent(tmp_path, templates):
    with FaultServer(script=Script(), max_model_len=120) as srv:
        with pytest.raises(UserError, match="stopped after"):
            generate(_cfg(tmp_path, srv.url, templates, max_requests=3))
        assert srv.bodies == []
    stats = _check_bookkeeping(tmp_path / "run")
    assert stats["rejections"] == {"prompt_too_long": 3}


def test_alpaca_launches_by_expected_yield(tmp_path, templates):
    with FaultServer(script=Script(tasks_per_reply=8)) as srv:
        generate(_cfg(tmp_path, srv.url, templates, num_instructions=4, concurrency=64, responses=0))
        alpaca = [b for b in srv.bodies if b["messages"][-1]["content"].startswith("STAGE=alpaca")]
    assert len(alpaca) <= 4  # not 64 requests of 8 tasks for a target of 4


def test_self_instruct_with_responses(tmp_path, templates):
    with FaultServer(script=Script()) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="self-instruct", num_instructions=8))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert stats["kept_instructions"] == 8
    cls = [r for r in records if r["is_classification"]]
    other = [r for r in records if not r["is_classification"]]
    assert other and all("candidates" in r for r in other)
    assert all(r["output"] in ("alpha", "beta") and "candidates" not in r for r in cls)
    st = _check_bookkeeping(tmp_path / "run")
    assert st["rejections"].get("input_equals_output", 0) >= len(other)  # instance-level rows counted too
    assert {"bootstrap", "classify", "respond"} <= set(st["usage_by_stage"]), st["usage_by_stage"]
    assert any(s.startswith("instances_") for s in st["usage_by_stage"])


def test_completion_api_with_json_schema(tmp_path, templates):
    def script(kind, req):
        assert kind == "completion"
        if req["prompt"].startswith("STAGE=alpaca"):
            assert req["response_format"]["type"] == "json_schema"
            s = Script()
            return json.dumps({"tasks": [{"instruction": s._instruction(), "input": "", "output": "x"}
                                         for _ in range(3)]})
        return "a short plain answer"

    with FaultServer(script=script) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, api="completion", structured="json", num_instructions=2))
    assert stats["kept_instructions"] == 2


def test_resume_restores_pool_counts_and_budget_consistency(tmp_path, templates):
    from generator.client import Usage
    from generator.generate import run_inputs
    from generator.pipeline import Pipeline
    from generator.runs import RunDir
    from generator.seeds import load_seeds
    from generator.templates import load_templates

    script = Script(answers=["a short plain answer", ("cut", "length")])
    with FaultServer(script=script) as srv:
        generate(_cfg(tmp_path, srv.url, templates, num_instructions=3, mode="self-instruct"))
        first = _rows(tmp_path / "run" / "rejected.jsonl")
        cfg = _cfg(tmp_path, srv.url, templates, num_instructions=7, mode="self-instruct")
        run = RunDir(cfg.out).open(cfg, run_inputs(cfg, load_templates(templates)))
        seeds = load_seeds(SEEDS, need_instances=False)

        class _C:  # the pool is built before any request: a client is not needed
            usage = Usage()

        pipe = Pipeline(cfg, seeds, load_templates(templates), _C(), run, False)
        in_pool = [r for r in first if r.get("in_pool")]
        assert len(pipe.pool) == len(seeds) + 3 + len(in_pool)
        run.close()
        stats = generate(cfg)
    assert stats["kept_instructions"] == 7
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert len({r["base_instruction"] for r in records if r["instance_index"] == 0}) == 7
    _check_bookkeeping(tmp_path / "run")


def test_request_budget_counts_across_sessions(tmp_path, templates):
    """--max-requests used to reset every session: a run killed and resumed ten times got ten
    budgets. Now what earlier sessions spent (usage.jsonl) counts against it."""
    with FaultServer(script=Script()) as srv:
        first = generate(_cfg(tmp_path, srv.url, templates, num_instructions=3))
        served = len(srv.bodies)
        assert first["requests"] == served
        with pytest.raises(UserError, match=r"across every session.*raise it to go on"):
            generate(_cfg(tmp_path, srv.url, templates, num_instructions=60, max_requests=served + 4))
        # the new session launched at most 4 units; their follow-up requests (responses) finish
        launched = [b for b in srv.bodies[served:] if b["messages"][-1]["content"].startswith("STAGE=alpaca")]
        assert 1 <= len(launched) <= 4
        stats = _check_bookkeeping(tmp_path / "run")
        assert stats["requests"] == len(srv.bodies)
        # the budget is spent: a third session starts nothing
        before = len(srv.bodies)
        with pytest.raises(UserError, match="across every session"):
            generate(_cfg(tmp_path, srv.url, templates, num_instructions=60, max_requests=served + 4))
        assert len(srv.bodies) == before


def test_usage_survives_kill_9(tmp_path, templates):
    """A run killed with SIGKILL mid-flight: usage.jsonl holds what was spent up to its last
    record group, so the resumed run's totals and budget start from there, not from zero."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    with FaultServer(script=Script()) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.cli", "generate", "--teacher-url", srv.url, "--teacher-model",
             "fake-model", "--out", str(out), "--num-instructions", "5000", "--seeds", SEEDS, "--templates",
             templates, "--structured", "text", "--constraints", "0", "--responses", "2", "--concurrency", "4"],
            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(repo)}, cwd=tmp_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_rows(out / "data.jsonl")) < 20:
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        served = len(srv.bodies)
    spent = sum(u["requests"] for u in _rows(out / "usage.jsonl"))
    groups = len({r["instruction_id"] for r in _rows(out / "data.jsonl")})
    assert groups >= 20 and spent >= groups  # each kept group cost at least its own response request
    assert served - 4 * 5 <= spent <= served + 4 * 5  # at most the units in flight (4, each up to 5 requests) differ


def test_damaged_run_files_and_a_foreign_data_file(tmp_path, templates):
    """Garbage stats.json is rebuilt from the files; a damaged config.yaml is a one-line error
    (--force rewrites it); a folder holding someone's own data.jsonl is never touched."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    mine = '{"instruction": "a", "output": "b"}\n{"instruction": "c", "out'  # their last line is cut
    (foreign / "data.jsonl").write_text(mine)
    with FaultServer(script=Script()) as srv:
        with pytest.raises(UserError, match="not a Sprout run"):
            generate(_cfg(tmp_path, srv.url, templates, out=str(foreign)))
        assert (foreign / "data.jsonl").read_text() == mine and not (foreign / "config.yaml").exists()

        generate(_cfg(tmp_path, srv.url, templates, num_instructions=2))
        run = tmp_path / "run"
        (run / "stats.json").write_text("\x00garbage{")
        stats = generate(_cfg(tmp_path, srv.url, templates, num_instructions=4))
        assert stats["kept_instructions"] == 4
        _check_bookkeeping(run)
        for damage in ("", "- just\n- a list\n", ": : :\n\t["):
            (run / "config.yaml").write_text(damage)
            with pytest.raises(UserError, match="config.yaml is damaged"):
                generate(_cfg(tmp_path, srv.url, templates, num_instructions=5))
        stats = generate(_cfg(tmp_path, srv.url, templates, num_instructions=5), force=True)
    assert stats["kept_instructions"] == 5
    _check_bookkeeping(run)


def test_disk_full_is_one_line_and_resumable(tmp_path, templates, monkeypatch, capsys):
    import errno

    from trainer.cli import main
    from generator.runs import RunDir

    real, calls = RunDir.write_group, []

    def write_group(self, records):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.data_path))
        real(self, records)

    monkeypatch.setattr(RunDir, "write_group", write_group)
    with FaultServer(script=Script()) as srv:
        argv = ["generate", "--teacher-url", srv.url, "--teacher-model", "fake-model", "--out", str(tmp_path / "run"),
                "--seeds", SEEDS, "--templates", templates, "--structured", "text", "--num-instructions", "6"]
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "disk full while writing" in err and "data.jsonl" in err and "resume" in err
        assert len(_rows(tmp_path / "run" / "data.jsonl")) == 2
        monkeypatch.setattr(RunDir, "write_group", real)
        assert main(argv) == 0
    _check_bookkeeping(tmp_path / "run")


def test_resume_compares_file_contents_not_path_spelling(tmp_path, templates, monkeypatch):
    """An edited seed file at the same path is refused (its records came from the old one); the
    same file by a relative path is accepted; any change is allowed while the run holds no record."""
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(Path(SEEDS).read_text())
    monkeypatch.chdir(tmp_path)
    with FaultServer(script=Script()) as srv:
        generate(_cfg(tmp_path, srv.url, templates, seeds=str(seeds), num_instructions=2))
        assert generate(_cfg(tmp_path, srv.url, templates, seeds="seeds.jsonl", num_instructions=3))["kept_instructions"] == 3
        seeds.write_text(seeds.read_text() + json.dumps({"instruction": "Name a colour.", "input": "",
                                                         "output": "Red."}) + "\n")
        with pytest.raises(UserError, match=r"seeds \(its content changed\)"):
            generate(_cfg(tmp_path, srv.url, templates, seeds="seeds.jsonl", num_instructions=4))
        # a run with no record yet takes any change
        (tmp_path / "empty").mkdir()
        for name in ("config.yaml",):
            (tmp_path / "empty" / name).write_text((tmp_path / "run" / name).read_text())
        (tmp_path / "empty" / "data.jsonl").write_text("")
        stats = generate(_cfg(tmp_path, srv.url, templates, seeds="seeds.jsonl", num_instructions=2,
                              out=str(tmp_path / "empty"), responses=2))
    assert stats["kept_instructions"] == 2


# -- sprout score: the same scorers over a dataset that already exists ----------------------------

def test_score_filters_any_dataset_and_rescoring_a_run_reselects(tmp_path, templates):
    from generator.score import ScoreRunConfig, score

    data = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": "Say hi. Use no commas.", "input": "", "output": "hi there",
             "constraints": [{"type": "no_commas", "params": {}, "text": "Use no commas."}]},
            {"instruction": "Say hi. Use no commas.", "input": "", "output": "hi, there",
             "constraints": [{"type": "no_commas", "params": {}, "text": "Use no commas."}]},
            {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": ""}]},
            {"messages": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "A pear."}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stats = score(ScoreRunConfig(data=str(data), out=str(tmp_path / "scored.jsonl")))
    assert stats["kept"] == 2 and stats["rejections"] == {"constraint_failed": 1, "empty_response": 1}
    kept = _rows(tmp_path / "scored.jsonl")
    assert [r.get("output") or r["messages"][-1]["content"] for r in kept] == ["hi there", "A pear."]
    assert kept[0]["scores"]["verifiers"] == 1.0 and 0 <= kept[0]["scores"]["relevance"] <= 1
    assert len(_rows(tmp_path / "scored.jsonl.rejected.jsonl")) == 2

    # a run's records keep their candidates: rescoring picks again without a teacher
    with FaultServer(script=Script()) as srv:
        # the budget raised as in test_alpaca_with_responses_keeps_a_checked_answer (same cause)
        generate(_cfg(tmp_path, srv.url, templates, num_instructions=3, constraints=1.0, max_constraints=1,
                      max_requests=3000))
    stats = score(ScoreRunConfig(data=str(tmp_path / "run"), out=str(tmp_path / "rescored.jsonl")))
    assert stats["kept"] == 3
    before = {r["id"]: r for r in _rows(tmp_path / "run" / "data.jsonl")}
    for r in _rows(tmp_path / "rescored.jsonl"):
        assert r["selected"] == before[r["id"]]["selected"] and r["output"] == before[r["id"]]["output"]


def test_score_cli_errors_are_one_line(tmp_path):
    from trainer.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    assert main(["score", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert main(["score", str(bad), "--out", str(tmp_path / "o.jsonl"), "--score", "judge,nope"]) == 2
    assert main(["score", str(bad), "--out", str(tmp_path / "o.jsonl"), "--min-score", "5"]) == 2


def test_reward_model_scores_and_selects(tmp_path):
    """A tiny sequence-classification model built here: its scores land in the candidates and
    the selection follows them (highest combined score)."""
    import asyncio

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from generator.models import embedded_model_dir
    from generator.scoring import RewardModel, ScoreConfig, Scorer, new_candidate

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id or 0)
    path = tmp_path / "rm"
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    rm = RewardModel(str(path))
    answers = ["first answer", "a second, longer answer", "third"]
    expected = rm.score_batch("Say something.", answers)
    cands = [new_candidate(a) for a in answers]
    scorer = Scorer(ScoreConfig(score=["reward"], reward_model=str(path)), reward=rm)
    best, reason = asyncio.run(scorer("Say something.", "Say something.", "", cands, []))
    assert reason is None and [c["scores"]["reward"] for c in cands] == expected
    assert best == max(range(3), key=lambda i: (expected[i], -i))


def test_magpie_mode_writes_requests_from_the_template_alone(tmp_path, templates):
    from generator.models import embedded_model_dir

    prompts = []

    def script(kind, req):
        if kind == "completion":  # the pre-query: the chat template up to the user's words
            prompts.append((req["prompt"], req.get("stop")))
            s = Script()
            return [s._instruction() for _ in range(int(req.get("n") or 1))]
        return "a short plain answer"

    with FaultServer(script=script, root=str(embedded_model_dir())) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=5,
                              system_prompt="You help gardeners."))
    assert stats["kept_instructions"] == 5
    prompt, stop = prompts[0]
    assert prompt.endswith("<|im_start|>user\n") and "You help gardeners." in prompt and "<|im_end|>" in stop
    recs = _rows(tmp_path / "run" / "data.jsonl")
    assert all(r["output"] == "a short plain answer" and r["input"] == "" for r in recs)
    _check_bookkeeping(tmp_path / "run")


class StatingScript(Script):
    """Every other instruction it writes is a statement, not a task."""

    def __init__(self):
        super().__init__()
        self.turn = itertools.count()

    def _instruction(self) -> str:
        task = super()._instruction()  # "Describe w1 w2 w3 w4 w5 itemN briefly."
        return f"The {task.split()[1]} {task.split()[6]} is older than it looks." if next(self.turn) % 2 else task


def test_statements_are_dropped_in_alpaca_mode_and_kept_as_magpie_requests(tmp_path, templates):
    """A small teacher writes statements ("Anna is twice as old as Ben.") among its tasks: the
    instruction modes drop them (counted as statement_not_task), --no-drop-statements keeps them,
    and Magpie keeps them, since its users ask by stating ("My car makes a noise when I brake.")."""
    def kept(run: Path) -> list[str]:
        return [r["instruction"] for r in _rows(run / "data.jsonl")]

    with FaultServer(script=StatingScript()) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="alpaca", responses=0, num_instructions=8))
    assert stats["rejections"]["statement_not_task"] >= 4
    assert kept(tmp_path / "run") and not any(" is older than" in t for t in kept(tmp_path / "run"))
    _check_bookkeeping(tmp_path / "run")

    with FaultServer(script=StatingScript()) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="alpaca", responses=0, num_instructions=8,
                              out=str(tmp_path / "kept"), drop_statements=False))
    assert "statement_not_task" not in stats["rejections"]
    assert any(" is older than" in t for t in kept(tmp_path / "kept"))

    from generator.models import embedded_model_dir

    script = StatingScript()

    def magpie(kind, req):
        if kind == "completion":
            return [script._instruction() for _ in range(int(req.get("n") or 1))]
        return "a short plain answer"

    with FaultServer(script=magpie, root=str(embedded_model_dir())) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=6,
                              out=str(tmp_path / "magpie")))
    assert "statement_not_task" not in stats["rejections"]
    assert any(" is older than" in t for t in kept(tmp_path / "magpie"))


def test_magpie_drops_requests_the_teacher_itself_finds_unlikely(tmp_path, templates):
    """Magpie requests come with their token log-probs; one whose mean per token is below
    --min-request-logprob (-3 by default: word salad from a small teacher) is rejected as
    unlikely_request and never enters the pool; =-inf keeps them all."""
    from generator.models import embedded_model_dir

    s = Script()
    asked = []

    def script(kind, req):
        if kind == "completion":
            asked.append(req.get("logprobs"))
            out = []
            for i in range(int(req.get("n") or 1)):
                text = s._instruction()
                out.append((text, "stop", [{w: -4.0 if i % 2 else -1.0} for w in text.split()]))
            return out
        return "a short plain answer"

    with FaultServer(script=script, root=str(embedded_model_dir())) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=6))
        assert asked[0] == 0  # a completion request for the sampled tokens' log-probs
        run = tmp_path / "run"
        unlikely = [r for r in _rows(run / "rejected.jsonl") if r["reason"] == "unlikely_request"]
        assert stats["kept_instructions"] == 6 and stats["rejections"]["unlikely_request"] == len(unlikely) >= 3
        assert all(r["mean_logprob"] == -4.0 for r in unlikely)
        kept = {r["instruction"] for r in _rows(run / "data.jsonl")}
        assert not kept & {r["instruction"] for r in unlikely}
        _check_bookkeeping(run)
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=6,
                              out=str(tmp_path / "all"), min_request_logprob=float("-inf")))
        assert "unlikely_request" not in stats["rejections"] and asked[-1] is None  # none asked for


def test_magpie_personas_and_system_prompts_take_turns_and_are_kept(tmp_path, templates):
    from generator.models import embedded_model_dir

    personas = tmp_path / "personas.txt"
    personas.write_text("# who asks\na beekeeper in Wales\n\n{\"persona\": \"a night-shift nurse\"}\n")
    systems = tmp_path / "systems.jsonl"
    systems.write_text('{"system_prompt": "You help with tax forms."}\n')
    seen, writer = [], Script()

    def script(kind, req):
        if kind == "completion":
            seen.append(req["prompt"])
            return [writer._instruction() for _ in range(int(req.get("n") or 1))]
        return "a short plain answer"

    with FaultServer(script=script, root=str(embedded_model_dir())) as srv:
        cfg = _cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=9, instructions_per_prompt=1,
                   concurrency=1, personas=str(personas), system_prompts=str(systems))
        generate(cfg)
    # in turn, from the first request: the system prompt, then each persona in its sentence
    assert "You help with tax forms." in seen[0] and "a beekeeper in Wales" in seen[1] and "a night-shift nurse" in seen[2]
    assert "You help with tax forms." in seen[3]
    recs = _rows(tmp_path / "run" / "data.jsonl")
    assert {r.get("persona") for r in recs} == {None, "a beekeeper in Wales", "a night-shift nurse"}
    for r in recs:
        assert (r["system_prompt"] == "You help with tax forms.") == (r.get("persona") is None)
        if r.get("persona"):
            assert r["persona"] in r["system_prompt"]
    _check_bookkeeping(tmp_path / "run")

    personas.write_text("a beekeeper in Wales\n")  # the run read another file: resuming is refused
    with FaultServer(script=script, root=str(embedded_model_dir())) as srv:
        cfg.teacher_url, cfg.num_instructions = srv.url, 12
        with pytest.raises(UserError, match="personas file"):
            generate(cfg)


def test_a_small_target_is_shared_by_every_persona(tmp_path, templates):
    from collections import Counter

    from generator.models import embedded_model_dir

    personas = tmp_path / "personas.txt"
    personas.write_text("a beekeeper\na nurse\na baker\na teacher\n")
    writer, sizes = Script(), []

    def script(kind, req):
        if kind == "completion":
            sizes.append(int(req.get("n") or 1))
            return [writer._instruction() for _ in range(sizes[-1])]
        return "a short plain answer"

    with FaultServer(script=script, root=str(embedded_model_dir())) as srv:
        generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=8, personas=str(personas)))
    assert max(sizes) == 2  # 8 instructions over 4 personas: 2 samples a request, not 8
    counts = Counter(r["persona"] for r in _rows(tmp_path / "run" / "data.jsonl"))
    assert len(counts) == 4 and max(counts.values()) <= 3


@pytest.mark.parametrize("content, expect", [("\n# nothing\n", "no personas in the file"),
                                             ('{"who": "x"}\n', "line 1: expected a 'persona' string field")])
def test_bad_personas_file_is_a_clear_error(tmp_path, templates, content, expect):
    personas = tmp_path / "p.txt"
    personas.write_text(content)
    with pytest.raises(UserError, match=expect):
        generate(_cfg(tmp_path, "http://127.0.0.1:9/v1", templates, mode="magpie", personas=str(personas)))


def test_system_prompts_steer_magpie_only(tmp_path, templates):
    """--personas steer every mode (tests/test_conversation.py); a system prompts file only magpie,
    whose request is written after a system turn."""
    with pytest.raises(UserError, match="--system-prompts steer --mode magpie"):
        generate(_cfg(tmp_path, "http://127.0.0.1:9/v1", templates, system_prompts="p.txt"))


def test_magpie_without_a_readable_chat_template_is_a_clear_error(tmp_path, templates):
    with FaultServer(script=lambda kind, req: "x") as srv:
        with pytest.raises(UserError, match="magpie needs the teacher's chat template"):
            generate(_cfg(tmp_path, srv.url, templates, mode="magpie"))


def test_selection_prefers_a_relevant_answer_and_drops_deflections():
    import asyncio

    from generator.scoring import ScoreConfig, Scorer, new_candidate

    cons = [{"type": "no_commas", "params": {}, "text": "Do not use any commas in your answer."}]
    prompt = "Suggest food for a family birthday party. Do not use any commas in your answer."
    cands = [new_candidate("I'm not sure yet. Please provide more details."),  # deflects
             new_candidate("Sure thing."),  # passes, says nothing
             new_candidate("Pizza, cake and fruit."),  # relevant but breaks the constraint
             new_candidate("For a family birthday party serve pizza and a big cake.")]
    best, reason = asyncio.run(Scorer(ScoreConfig())(prompt, prompt, "", cands, cons))
    assert reason is None and best == 3
    assert cands[0]["reasons"] == ["deflects"] and cands[2]["reasons"] == ["constraint_failed"]
    assert cands[3]["scores"]["relevance"] > cands[1]["scores"]["relevance"] == 0.0


def test_an_answer_that_repeats_the_request_is_never_kept():
    import asyncio

    from generator.scoring import ScoreConfig, Scorer, new_candidate

    cons = [{"type": "end_with_question", "params": {}, "text": "The last sentence of your response must be a question."}]
    request = "Can you help me find the fastest way to count the days in 300 days?"
    prompt = request + " " + cons[0]["text"]
    cands = [new_candidate(request), new_candidate("Count them one by one. Does that help?")]
    best, _ = asyncio.run(Scorer(ScoreConfig())(prompt, prompt, "", cands, cons))
    assert cands[0]["reasons"] == ["echoes_prompt"] and best == 1
    # an answer that is the task's input again is not an answer either (the paper's input == output rule)
    cands = [new_candidate("The cat sat on the mat."), new_candidate("A cat was sitting on the mat.")]
    best, _ = asyncio.run(Scorer(ScoreConfig())("Rewrite in the past continuous.\n\nThe cat sat on the mat.",
                                                "Rewrite in the past continuous.", "The cat  sat on the mat.", cands, []))
    assert cands[0]["reasons"] == ["input_equals_output"] and best == 1


def test_a_bootstrap_task_that_restates_its_prompt_is_rejected(tmp_path, templates):
    """A small teacher turns the bootstrap prompt's own words into "tasks" ("Create a JSON document
    with 8 tasks numbered 9 to 16."). An instruction with two or more words that only the prompt
    uses -- not its examples, not the seeds -- is rejected as echoes_prompt, with those words; a
    task that shares one such word, or only seed words, is kept."""
    class Echoing(Script):
        def __call__(self, kind, req):
            text = req["messages"][-1]["content"] if kind == "chat" else req["prompt"]
            if text.startswith("STAGE=bootstrap") and self.seen["bootstrap"] == 0:
                self.seen["bootstrap"] += 1
                return ("1. Repeat every stage of the bootstrap list.\n"    # "stage", "bootstrap": the prompt's
                        "2. Describe the bootstrap " + " ".join(WORDS[:3]) + " briefly.\n"  # one prompt word: kept
                        "3. " + self._instruction())
            return super().__call__(kind, req)

    with FaultServer(script=Echoing()) as srv:
        generate(_cfg(tmp_path, srv.url, templates, mode="self-instruct", num_instructions=3, concurrency=1))
    run = tmp_path / "run"
    echoes = [r for r in _rows(run / "rejected.jsonl") if r["reason"] == "echoes_prompt"]
    assert [(r["instruction"], r["prompt_words"]) for r in echoes] == [
        ("Repeat every stage of the bootstrap list.", ["bootstrap", "stage"])]
    kept = {r["base_instruction"] for r in _rows(run / "data.jsonl")}
    assert "Describe the bootstrap " + " ".join(WORDS[:3]) + " briefly." in kept
    _check_bookkeeping(run)


def test_a_looping_answer_is_never_kept():
    """Real replies of the 135M teacher that loop across lines (so no line repeats three times) are
    caught by the same sentence three times; a sentence twice, or a list whose items share words, is
    not a loop."""
    from generator.scoring import check_reasons

    meal = ("Serving a beginner with ease is an absolute must.\nYou can enjoy your favorite dish with ease.\n\n"
            "I will make your meal. I am here to help you.\n\nThis is an endless mission.\n\n"
            "I will make your meal. I am here to help you.\n\nOne day I promise I will make your meal.\n\n"
            "I am here to help you.\n\nHere are the parts I can use.")
    books = ("Here are five books to read:\n\n1. The New York Times bestseller list\n2. The Scandalous Library\n"
             "3. The New York Times bestseller list\n4. The New York Times bestseller list")
    for text in (meal, books):
        assert "repetitive_response" in check_reasons(text, "stop", "Help me cook a popular dish.")
    fine = ("Preheat the oven to 200 C. Chop the onions and the garlic. Fry them for five minutes. "
            "Chop the onions and the garlic again if they are still coarse. Serve hot.\n"
            "1. Chop the red peppers into strips.\n2. Chop the green peppers into strips.\n3. Chop the herbs.")
    assert check_reasons(fine, "stop", "Help me cook a popular dish.") == []
