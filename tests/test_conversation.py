"""Multi-turn generation (`--turns`) against the scripted teacher: conversations grown from kept
first turns, every assistant turn scored, a conversation cut at a failing turn (counted), resume,
export and the trainer's view of the records."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from generator.conversation import clean_followup, followup_reasons, parse_turns
from generator.errors import UserError
from generator.generate import generate
from generator.record import user_turn
from tests.fault_server import FaultServer
from tests.test_pipeline_scripted import TEMPLATES, WORDS, Script, _cfg, _check_bookkeeping, _rows

FOLLOWUP = ("STAGE=followup turn={{ (conversation | length) // 2 + 1 }} {{ move }}{% if persona %} P={{ persona }}"
            "{% endif %} FIRST=<<{{ conversation[0].content }}>>")


@pytest.fixture
def templates(tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    for stage, (parser, body) in {**TEMPLATES, "followup": ("response", FOLLOWUP)}.items():
        (folder / f"{stage}.jinja").write_text(f"{{#- parser: {parser} -#}}\n{{% block user %}}{body}{{% endblock %}}\n")
    return str(folder)


class ConvScript(Script):
    """Script plus the two requests of a follow-up turn: the user's message (`followup(turn)`
    gives it from the turn and the conversation's first user turn: turn 2 is the first follow-up)
    and the answer to it (`answers(turn)`)."""

    def __init__(self, followup=None, answers=None, **kw):
        super().__init__(**kw)
        self.words = random.Random(1)
        self.followup = followup or (lambda turn, first: "User: Could you explain "
                                     + " ".join(self.words.sample(WORDS, 4)) + " again?")
        self.answers_for = answers or (lambda turn: [f"turn {turn} answer number {next(self.n)} in plain words"])
        self.n = itertools.count()
        self.conversations = []  # the messages of every follow-up answer request

    def __call__(self, kind, req):
        text = req["messages"][-1]["content"]
        n = int(req.get("n") or 1)
        if text.startswith("STAGE=followup"):
            turn = int(re.search(r"turn=(\d+)", text).group(1))
            first = re.search(r"FIRST=<<(.*)>>", text, re.S).group(1)
            return [self.followup(turn, first) for _ in range(n)]
        if not text.startswith("STAGE="):  # the answer to a follow-up: the conversation is sent whole
            self.conversations.append(req["messages"])
            turn = sum(m["role"] == "user" for m in req["messages"])
            return [a for a in self.answers_for(turn) for _ in range(n)][:n] or [""] * n
        return super().__call__(kind, req)


def test_turns_setting_is_parsed_and_checked():
    assert parse_turns(3) == (3, 3) and parse_turns("2-4") == (2, 4) and parse_turns(" 1 - 2 ") == (1, 2)
    for bad in ("0", "4-2", "x", "9", "2-"):
        with pytest.raises(UserError, match="--turns"):
            parse_turns(bad)


@pytest.mark.parametrize("setting,message", [
    ({"api": "completion"}, "needs --api chat"),
    ({"responses": 0, "constraints": 0.0}, "needs --responses"),
])
def test_multi_turn_refuses_settings_it_cannot_use(tmp_path, setting, message):
    cfg = _cfg(tmp_path, "http://127.0.0.1:9/v1", None, turns="3", **setting)
    with pytest.raises(UserError, match=message):
        cfg.validate()


def test_followup_is_cleaned_and_checked():
    assert clean_followup('**User:** "Can you shorten it to two lines?"\nAssistant: Sure.') == \
        "Can you shorten it to two lines?"
    conv = [{"role": "user", "content": "Write a poem about the sea at night."},
            {"role": "assistant", "content": "The waves are dark and the moon is bright over the sea."}]
    assert followup_reasons("Now make it rhyme, please.", "stop", conv) == []
    assert followup_reasons("Okay", "stop", conv) == ["followup_empty"]
    assert followup_reasons("Write a poem about the sea at night.", "stop", conv) == ["followup_repeats"]
    assert followup_reasons("The waves are dark and the moon is bright over the sea.", "stop", conv) == \
        ["followup_echoes_answer"]
    assert followup_reasons("Tell me more about it", "length", conv) == ["followup_too_long"]
    for voice in ("I'm ready to help. What do you need?", "The user's next message was: tell me more",
                  "Sure! Here is the list you asked for.", "How can I assist you with the poem?"):
        assert followup_reasons(voice, "stop", conv) == ["followup_not_user_voice"], voice
    from generator.conversation import on_topic

    assert on_topic("Can the moon poem rhyme?", conv) > on_topic("What is a tax form?", conv) == 0.0


def test_three_turn_conversations_are_scored_turn_by_turn(tmp_path, templates):
    script = ConvScript()
    with FaultServer(script=script) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, turns="3", responses=2))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert stats["kept_instructions"] == 6 and records
    assert stats["conversations"] == {"turns_requested": "3", "records_by_assistant_turns": {"3": len(records)}}
    for r in records:
        m = r["messages"]
        assert r["num_turns"] == 3 and [x["role"] for x in m] == ["user", "assistant"] * 3
        assert m[0]["content"] == user_turn(r["instruction"], r["input"]) and m[1]["content"] == r["output"]
        for k, t in enumerate(r["turns"]):
            assert m[2 + 2 * k]["content"] == t["followup"] and t["followup"].startswith("Could you explain")
            assert m[3 + 2 * k]["content"] == t["candidates"][t["selected"]]["text"]
            assert m[3 + 2 * k]["content"].startswith(f"turn {k + 2} answer")  # answered turn k+2's request
            assert t["move"] in {"clarify", "deeper", "constraint", "format"} and len(t["candidates"]) == 2
            assert "relevance" in t["scores"]
        assert r["templates"]["followup"]["name"] == "followup" and r["templates"]["followup"]["sha256"]
    # each follow-up answer request carried the conversation so far, the new user turn last
    longest = max(script.conversations, key=len)
    assert [x["role"] for x in longest] == ["user", "assistant", "user", "assistant", "user"]
    _check_bookkeeping(tmp_path / "run")

    # the chat export and the trainer see the whole conversation; Alpaca keeps the first turn
    from generator.export import export
    from trainer.data import load_examples

    export(str(tmp_path / "run"), "messages", str(tmp_path / "m.jsonl"))
    export(str(tmp_path / "run"), "alpaca", str(tmp_path / "a.jsonl"))
    assert [json.loads(x)["messages"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == \
        [r["messages"] for r in records]
    assert [json.loads(x)["output"] for x in (tmp_path / "a.jsonl").read_text().splitlines()] == \
        [r["output"] for r in records]
    examples = load_examples(tmp_path / "run")
    assert [e.messages for e in examples] == [r["messages"] for r in records]

    # the report says how far the conversations got and shows their later turns
    from trainer.report import write_report

    html = Path(write_report(str(tmp_path / "run"), None, None, str(tmp_path / "report.html"))).read_text()
    assert f"records by assistant turns</td><td>3: {len(records)}" in html.replace("<td class=\"num\">", "<td>")
    assert "turn 2: user (" in html and "turn 3: assistant" in html


def test_a_failing_turn_ends_the_conversation_at_the_last_good_turn(tmp_path, templates):
    """Turn 3's follow-up repeats the first request: conversations stop at 2 turns, each cut
    counted once as followup_repeats. Turn 2's answers all empty in a second run: the records
    keep their first turn only, counted as turn_empty_response."""
    words = random.Random(2)

    def followup(turn, first):  # turn 3: the first user turn again, word for word
        return "Could you explain " + " ".join(words.sample(WORDS, 4)) + " again?" if turn == 2 else first

    with FaultServer(script=ConvScript(followup=followup)) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, turns="3", responses=2))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert {r["num_turns"] for r in records} == {2} and all(len(r["messages"]) == 4 for r in records)
    assert stats["rejections"]["followup_repeats"] == len(records)
    assert stats["conversations"]["records_by_assistant_turns"] == {"2": len(records)}
    _check_bookkeeping(tmp_path / "run")

    empty = ConvScript(answers=lambda turn: [""])
    with FaultServer(script=empty) as srv:
        stats = generate(_cfg(tmp_path / "b", srv.url, templates, turns="2", responses=2))
    records = _rows(tmp_path / "b" / "run" / "data.jsonl")
    assert records and all(r["num_turns"] == 1 and "messages" not in r for r in records)
    assert stats["rejections"]["turn_empty_response"] == len(records)
    _check_bookkeeping(tmp_path / "b" / "run")


def test_multi_turn_run_resumes_to_its_target(tmp_path, templates):
    with FaultServer(script=ConvScript()) as srv:
        generate(_cfg(tmp_path, srv.url, templates, turns="2-3", num_instructions=3))
        stats = generate(_cfg(tmp_path, srv.url, templates, turns="2-3", num_instructions=7))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert stats["kept_instructions"] == 7
    assert all(r["num_turns"] in (2, 3) and len(r["messages"]) == 2 * r["num_turns"] for r in records)
    by_turns = stats["conversations"]["records_by_assistant_turns"]
    assert sum(by_turns.values()) == len(records) and set(by_turns) <= {"2", "3"}
    _check_bookkeeping(tmp_path / "run")


@pytest.mark.parametrize("method", ["magpie", "template"])
def test_followups_carry_the_persona_both_ways(tmp_path, templates, method):
    """magpie: the conversation rendered with the teacher's chat template up to a new user turn,
    after Magpie's multi-turn system turn with the move and the persona; template: the followup
    stage's chat prompt with the persona."""
    from generator.models import embedded_model_dir

    personas = tmp_path / "personas.txt"
    personas.write_text("a beekeeper\n")
    script = ConvScript()
    chats, prequeries = [], []
    orig = script.__call__

    def spy(kind, req):
        if kind == "completion":
            prequeries.append(req["prompt"])
            if "<|im_start|>assistant" in req["prompt"]:  # a follow-up: the user's next message
                return [f"How would a {w} change that?" for w in random.sample(WORDS, int(req.get("n") or 1))]
            return [script._instruction() for _ in range(int(req.get("n") or 1))]  # the first request
        if req["messages"][-1]["content"].startswith("STAGE=followup"):
            chats.append(req["messages"][-1]["content"])
        return orig(kind, req)

    with FaultServer(script=spy, root=str(embedded_model_dir())) as srv:
        generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=2, turns="2",
                      personas=str(personas), followup=method))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert all(r["persona"] == "a beekeeper" and r["num_turns"] == 2 for r in records)
    assert all(r["turns"][0]["followup_method"] == method for r in records)
    if method == "template":
        assert chats and all("P=a beekeeper" in t for t in chats)
    else:
        follow = [q for q in prequeries if "<|im_start|>assistant" in q]
        assert not chats and len(follow) == len(records)
        for q in follow:
            assert "In the next message the user " in q and "The user is a beekeeper." in q
            assert q.endswith("<|im_start|>user\n")
        assert all(any(r["messages"][1]["content"] in q for q in follow) for r in records)  # the answer precedes it


def test_magpie_followups_the_teacher_finds_unlikely_end_the_conversation(tmp_path, templates):
    """Magpie follow-ups are judged by --min-request-logprob like the first request: when every
    sampled follow-up is below it, the conversation ends at its first turn, counted as
    followup_unlikely."""
    from generator.models import embedded_model_dir

    script = ConvScript()

    def spy(kind, req):
        if kind == "completion":
            n = int(req.get("n") or 1)
            if "<|im_start|>assistant" in req["prompt"]:  # a follow-up: fluent words, unlikely to its writer
                return [(t, "stop", [{w: -5.0} for w in t.split()])
                        for t in (f"How would a {w} change that?" for w in random.sample(WORDS, n))]
            return [script._instruction() for _ in range(n)]
        return script(kind, req)

    with FaultServer(script=spy, root=str(embedded_model_dir())) as srv:
        stats = generate(_cfg(tmp_path, srv.url, templates, mode="magpie", num_instructions=2, turns="2",
                              followup="magpie"))
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert records and all(r["num_turns"] == 1 for r in records)
    assert stats["rejections"]["followup_unlikely"] == len(records)
    _check_bookkeeping(tmp_path / "run")


@pytest.mark.parametrize("mode,stage", [("alpaca", "alpaca"), ("self-instruct", "bootstrap")])
def test_personas_steer_the_bootstrap_modes_in_turn(tmp_path, templates, mode, stage):
    """--personas beyond magpie: each alpaca / bootstrap request carries the next persona into its
    template, and the records keep the persona of the request they came from."""
    from generator.templates import load_templates

    shipped = load_templates()[stage].render(structured=False, examples=[{"id": "a", "instruction": "Say hi.",
                                             "input": "", "output": "Hi."}], num_tasks=2, num_instructions=2,
                                             start=2, persona="a beekeeper in Wales")
    assert "one that a beekeeper in Wales would bring to an AI assistant" in shipped.user
    folder = Path(templates)
    body = (folder / f"{stage}.jinja").read_text().replace("{% endblock %}", " P=<<{{ persona }}>>{% endblock %}")
    (folder / f"{stage}.jinja").write_text(body)
    personas = tmp_path / "personas.txt"
    personas.write_text("a beekeeper\na night-shift nurse\n")
    seen = []
    script = Script()

    def spy(kind, req):
        text = req["messages"][-1]["content"]
        if text.startswith(f"STAGE={stage}"):
            seen.append(re.search(r"P=<<(.*)>>", text).group(1))
        return script(kind, req)

    with FaultServer(script=spy) as srv:
        generate(_cfg(tmp_path, srv.url, templates, mode=mode, num_instructions=6, personas=str(personas),
                      concurrency=1))
    assert len(seen) >= 2 and seen == [("a beekeeper", "a night-shift nurse")[i % 2] for i in range(len(seen))]
    records = _rows(tmp_path / "run" / "data.jsonl")
    assert {r["persona"] for r in records} == {"a beekeeper", "a night-shift nurse"} and len(records) >= 6
    assert all("system_prompt" not in r for r in records)
    _check_bookkeeping(tmp_path / "run")
    if mode == "alpaca":  # the report splits counts and diversity by persona
        from trainer.report import write_report

        html = Path(write_report(str(tmp_path / "run"), None, None, str(tmp_path / "r.html"))).read_text()
        assert "records by persona" in html and "<h3>By persona</h3>" in html
        by = html[html.index("<h3>By persona</h3>"):]
        assert "a beekeeper" in by[:2000] and "a night-shift nurse" in by[:2000]
