"""Paper fidelity and teacher-proofing: instance filters, JSON schemas for strict mode, the
classify stage's Yes/No helpers, prompt templates, options for languages other than English."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from generator.classify import (classify_is_classification, verdict_from_logprobs, verdict_from_text,
                                yes_no_request_params)
from generator.client import Completion
from generator.decontam import Decontaminator
from generator.errors import UserError
from generator.filters import FilterConfig, InstructionFilter, clean_instances
from generator.gen_config import MODE_DEFAULTS, SAMPLING_KEYS, GenerateConfig
from generator.parsing import PARSERS, SCHEMAS, response_format
from generator.templates import load_templates

# -- filters --------------------------------------------------------------------------------------


def test_no_input_task_keeps_all_its_different_outputs():
    haikus = [{"input": "", "output": h} for h in ("Rain on the tin roof", "Grey clouds, wet pavement",
                                                   "Drops race down the glass")]
    kept, reasons, task = clean_instances(haikus, FilterConfig())
    assert task is None and len(kept) == 3 and not reasons


def test_same_non_empty_input_with_different_outputs_drops_the_task():
    insts = [{"input": "2 + 2", "output": "4"}, {"input": "2 + 2", "output": "5"}, {"input": "", "output": "x"}]
    assert clean_instances(insts, FilterConfig()) == ([], {}, "conflicting_outputs")


def test_ascii_start_is_an_option():
    text = "Écris un poème sur la mer."
    assert InstructionFilter(FilterConfig())(text) == "starts_with_non_ascii"
    assert InstructionFilter(FilterConfig(ascii_start=False))(text) is None
    assert InstructionFilter(FilterConfig(ascii_start=False))("请写一首关于大海的短诗。 四 五 六") is None
    assert InstructionFilter(FilterConfig(ascii_start=False))("- List three red fruits.") == "starts_with_punctuation"


# -- settings -------------------------------------------------------------------------------------


def test_instance_presence_penalty_is_the_papers():
    assert MODE_DEFAULTS["self-instruct"]["instance_presence_penalty"] == 1.5
    assert "instance_presence_penalty" in SAMPLING_KEYS
    cfg = GenerateConfig(out="x", instance_presence_penalty=0.5)
    assert cfg.sampling()["instance_presence_penalty"] == 0.5


def test_new_generate_fields_and_validation():
    cfg = GenerateConfig(out="x")
    assert (cfg.ascii_start, cfg.tokenizer) == (True, "rouge")
    GenerateConfig(out="x", tokenizer="unicode").validate()
    with pytest.raises(UserError, match="--tokenizer 'bpe'"):
        GenerateConfig(out="x", tokenizer="bpe").validate()


def test_decontaminator_counts_unicode_words():
    bench = ["请把下面这段关于气候变化的新闻文章翻译成英文并总结要点"]
    leak = "请把下面这段关于气候变化的新闻文章翻译成英文"
    assert Decontaminator(bench).check(leak) is None  # rouge_score sees no words at all
    assert Decontaminator(bench, tokenizer="unicode").check(leak) == "contaminated_13gram"


# -- JSON schemas: OpenAI's strict mode needs additionalProperties: false on every object ----------


def _objects(schema):
    if isinstance(schema, dict):
        if schema.get("type") == "object":
            yield schema
        for v in schema.values():
            yield from _objects(v)
    elif isinstance(schema, list):
        for v in schema:
            yield from _objects(v)


@pytest.mark.parametrize("parser", sorted(SCHEMAS))
def test_every_schema_object_is_strict(parser):
    fmt = response_format(parser)
    assert fmt["json_schema"]["strict"] is True
    objects = list(_objects(fmt["json_schema"]["schema"]))
    assert objects
    for obj in objects:
        assert obj["additionalProperties"] is False
        assert sorted(obj["required"]) == sorted(obj["properties"])  # strict: every property required


def test_every_parser_has_a_schema():
    from generator.parsing import FREE_FORM

    assert set(PARSERS) - FREE_FORM == set(SCHEMAS)


# -- classification: a Yes or a No out of any teacher ----------------------------------------------


def test_yes_no_request_params():
    vllm = yes_no_request_params(True)
    assert vllm["extra_body"] == {"structured_outputs": {"choice": ["Yes", "No"]}}
    assert "guided_choice" not in str(vllm)  # ignored by vLLM 0.32: it would silently do nothing
    assert yes_no_request_params(True, "completion")["extra_body"]["structured_outputs"]["choice"] == [" Yes", " No"]
    assert yes_no_request_params(False, "chat") == {"max_tokens": 1, "temperature": 0.0, "logprobs": True,
                                                    "top_logprobs": 5}
    assert yes_no_request_params(False, "completion")["logprobs"] == 5


def test_verdict_from_logprobs():
    assert verdict_from_logprobs({" Yes": math.log(0.3), "No": math.log(0.2), "yes": math.log(0.05)}) is True
    assert verdict_from_logprobs({"The": -0.1, " no": -2.0, "YES": -3.0}) is False
    assert verdict_from_logprobs({"The": -0.1, "A": -2.0}) is None
    assert verdict_from_logprobs(None) is None
    assert verdict_from_text("The task is") is None and verdict_from_text(" No.") is False


class _FakeClient:
    """Records requests; answers with a fixed Completion (the real client is tested on vLLM below)."""

    def __init__(self, text, top=None):
        self.text, self.top, self.calls = text, top, []

    async def _answer(self, kind, prompt, params):
        self.calls.append((kind, prompt, params))
        return Completion([self.text], ["stop"], 1, 1, "http://x/v1", "m", top_logprobs=self.top)

    async def chat(self, messages, **params):
        return await self._answer("chat", messages, params)

    async def complete(self, prompt, **params):
        return await self._answer("completion", prompt, params)


def test_classify_uses_logprobs_off_vllm_and_text_as_last_resort():
    client = _FakeClient("The task is", top=[{"The": -0.5, "No": -1.0, "Yes": -2.0}])
    assert asyncio.run(classify_is_classification(client, [{"role": "user", "content": "q"}], "chat", False)) is False
    assert client.calls[0][2]["top_logprobs"] == 5
    client = _FakeClient("Yes", top=None)  # a server that returns no logprobs
    assert asyncio.run(classify_is_classification(client, "prompt", "completion", False)) is True
    assert client.calls[0][0] == "completion"
    client = _FakeClient("The task is")
    assert asyncio.run(classify_is_classification(client, "prompt", "completion", True)) is None
    assert "structured_outputs" in client.calls[0][2]["extra_body"]


@pytest.mark.vllm
@pytest.mark.parametrize("api", ["chat", "completion"])
def test_guided_choice_always_yields_yes_or_no_on_vllm(vllm_teacher, api):
    """The embedded model answered the free-text prompt with "The task is"; under guided choice
    every answer is readable."""
    from generator.client import TeacherClient

    tmpl = load_templates()["classify"]
    tasks = ["Write a limerick about a cat.", "Is the review positive or negative?", "Summarize the text."]

    async def go():
        async with TeacherClient(vllm_teacher.base_url, vllm_teacher.model) as client:
            out = []
            for t in tasks:
                p = tmpl.render(structured=False, instruction=t)
                out.append(await classify_is_classification(client, p.messages() if api == "chat" else p.completion,
                                                            api, server_is_vllm=True))
            return out

    assert all(v in (True, False) for v in asyncio.run(go()))


# -- templates ------------------------------------------------------------------------------------


def test_classify_prompt_has_thirty_worked_cases():
    user = load_templates()["classify"].render(structured=False, instruction="Sort the list.").user
    answers = re.findall(r"Is it classification\? (Yes|No)\n", user)
    assert len(answers) == 30 and 10 <= answers.count("Yes") <= 20


@pytest.mark.parametrize("stage,min_tasks,parser_key", [("instances_input_first", 10, "Output:"),
                                                        ("instances_output_first", 15, "Class label:")])
def test_instance_prompts_show_worked_tasks_the_parser_reads(stage, min_tasks, parser_key):
    t = load_templates()[stage]
    p = t.render(structured=False, instruction="Sort the list.", max_instances=5)
    for form in (p.user, p.completion):
        shots = form.split("Task: ")[1:-1]  # the worked tasks, without the new one
        assert len(shots) >= min_tasks
        multi = 0
        for shot in shots:  # each worked task reads back through the stage's own parser
            parsed = PARSERS[t.parser](shot.split("\n", 1)[1])
            assert parsed.items and not parsed.failures, shot
            multi += len(parsed.items) >= 2
        assert multi >= 5
    assert p.user.split("Task: ", 1)[1] == p.completion.split("Task: ", 1)[1]  # the same worked tasks


def test_alpaca_prompt_numbering_and_json_examples():
    import json

    ex = [{"id": str(i), "instruction": f"Task {i} \"quoted\"", "input": "" if i else "a\tb", "output": f"o{i}\nx"}
          for i in range(3)]
    t = load_templates()["alpaca"]
    text = t.render(structured=False, examples=ex, num_tasks=5, start=4).user
    assert "come up with 5 more diverse task instructions, numbered 4 to 8" in text
    assert text.endswith("###\n4. Instruction:") and "3. Output:" in text
    js = t.render(structured=True, examples=ex, num_tasks=5, start=4).user
    assert "1. Instruction" not in js and "<noinput>" not in js
    shown = json.loads(js[js.index('{"tasks": ['):js.index("]}") + 2])
    assert shown == {"tasks": [{k: e[k] for k in ("instruction", "input", "output")} for e in ex]}


def test_bootstrap_asks_for_different_tasks_numbered_on():
    ex = [{"id": str(i), "instruction": f"Task {i}."} for i in range(8)]
    user = load_templates()["bootstrap"].render(structured=False, examples=ex, num_instructions=8, start=9).user
    assert "numbered 9 to 16" in user and "do not repeat or reword an example" in user


@pytest.mark.parametrize("api", ["chat", "completion"])
def test_the_real_client_reads_logprobs_off_vllm(api):
    """The same as above through TeacherClient and a server that sends OpenAI's logprobs shapes:
    the first token says nothing ("The"), its alternatives say No. (Before the client read them,
    every non-vLLM teacher fell through to the text and this was None.)"""
    from generator.client import TeacherClient
    from tests.fault_server import FaultServer

    def script(kind, req):
        return [("The task is", "stop", [{"The": -0.5, "No": -1.0, "Yes": -2.0}, {" task": -0.1}, {" is": -0.2}])]

    async def go(url):
        async with TeacherClient(url, "fake-model") as client:
            verdict = await classify_is_classification(
                client, [{"role": "user", "content": "q"}] if api == "chat" else "prompt", api, server_is_vllm=False)
            out = await (client.chat([{"role": "user", "content": "q"}], logprobs=True) if api == "chat"
                         else client.complete("p", logprobs=0))
            plain = await client.complete("p")
            return verdict, out, plain

    with FaultServer(script=script) as srv:
        verdict, out, plain = asyncio.run(go(srv.url))
    assert verdict is False
    assert out.token_logprobs == [[-0.5, -0.1, -0.2]] and out.mean_logprob(0) == pytest.approx(-0.8 / 3)
    assert plain.token_logprobs is None and plain.mean_logprob(0) is None
