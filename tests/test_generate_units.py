"""Unit tests of the generation engine's pieces: parsers, filters, templates, seeds, run resume."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from generator.errors import UserError
from generator.filters import FilterConfig, InstructionFilter, clean_instances, is_statement
from generator.parsing import (parse_alpaca_tasks, parse_instances, parse_labeled_instances,
                               parse_numbered_instructions, parse_yes_no)
from generator.runs import RunDir
from generator.seeds import load_seeds
from generator.templates import load_templates

# -- parsers --------------------------------------------------------------------------------------


def test_numbered_instructions_well_formed_and_ragged():
    text = "1. Write a haiku about rain.\n2) Explain  how\n   tides work.\n\n3. \n4. Classify the tone."
    p = parse_numbered_instructions(text)
    assert p.items == ["Write a haiku about rain.", "Explain how tides work.", "Classify the tone."]
    assert p.failures == 1  # the empty item 3


def test_numbered_instructions_completion_continuation_and_truncation():
    # a completion prompt ended with "9." so the reply continues item 9 without its number
    p = parse_numbered_instructions(" Name a prime.\n10. List two oceans.\n11. Summarize the", "length", start=9)
    assert p.items == ["Name a prime.", "List two oceans."] and p.cut == 1


def test_numbered_instructions_json_strips_copied_numbers_and_recovers_cut_json():
    p = parse_numbered_instructions('{"instructions": ["7. Name a fruit.", "Say hi twice."]}', structured=True)
    assert p.items == ["Name a fruit.", "Say hi twice."]
    cut = parse_numbered_instructions('{"instructions": ["Name a fruit.", "Say hi tw', "length", structured=True)
    assert cut.items == ["Name a fruit."] and cut.failures == 0


ALPACA_REPLY = """###
4. Instruction: Translate the sentence to French.
4. Input:
I like apples.
4. Output:
J'aime les pommes.
###
5. Instruction: Give three tips for sleeping well.
5. Input:
<noinput>
5. Output:
Keep a schedule, avoid screens, and keep the room cool.
###
6. Instruction: broken task without fields
###
7. Instruction: Summarize the text.
7. Input:
A long"""


def test_alpaca_tasks_text():
    p = parse_alpaca_tasks(ALPACA_REPLY, "length")
    assert [t["instruction"] for t in p.items] == ["Translate the sentence to French.",
                                                   "Give three tips for sleeping well."]
    assert p.items[0]["input"] == "I like apples." and p.items[1]["input"] == ""
    assert p.failures == 1 and p.cut == 1  # task 6 unreadable; task 7 cut by the length limit


def test_alpaca_tasks_json():
    reply = json.dumps({"tasks": [{"instruction": "Add 2 and 3.", "input": "<noinput>", "output": "5"},
                                  {"instruction": "", "input": "", "output": "x"}]})
    p = parse_alpaca_tasks(reply, structured=True)
    assert p.items == [{"instruction": "Add 2 and 3.", "input": "", "output": "5"}] and p.failures == 1


def test_yes_no():
    assert parse_yes_no(" Yes").items == [True]
    assert parse_yes_no("no, it is not").items == [False]
    assert parse_yes_no("Maybe").failures == 1


def test_instances_input_first_formats():
    text = "Example 1\nInput: 2 + 2\nOutput: 4\nExample 2\nInput: 3 + 5\nOutput: 8\n\nTask: next task"
    assert parse_instances(text).items == [{"input": "2 + 2", "output": "4"}, {"input": "3 + 5", "output": "8"}]
    assert parse_instances("Output: Paris").items == [{"input": "", "output": "Paris"}]
    assert parse_instances("Just the answer.").items == [{"input": "", "output": "Just the answer."}]


def test_labeled_instances_output_first():
    text = "Class label: positive\nSentence: I love it.\nClass label: negative\nInput: Awful."
    p = parse_labeled_instances(text)
    assert p.items == [{"input": "I love it.", "output": "positive"}, {"input": "Awful.", "output": "negative"}]


# -- filters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text,reason", [
    ("Say hi.", "too_short"),
    (" ".join(["word"] * 151), "too_long"),
    ("Describe the image of a cat in detail.", "blocklisted_word"),
    ("Please go to the store and buy milk.", "blocklisted_word"),
    ("Write a program that sorts numbers.", "write_a_program"),
    ("- List three fruits that are red.", "starts_with_punctuation"),
    ("Écris un poème sur la mer.", "starts_with_non_ascii"),
    ("Give three reasons to learn Python.", None),
    ("Summarize the profile of this mapmaker.", None),  # "map" only as a whole word
])
def test_instruction_filter(text, reason):
    assert InstructionFilter(FilterConfig())(text) == reason


@pytest.mark.parametrize("text,statement", [
    ("Anna is twice as old as Ben.", True),  # these four were kept from the 135M teacher's self-instruct runs
    ("A child's favorite dessert is not chocolate.", True),
    ("Some benefits of working from home are 100 percent safe.", True),
    ("The early bird cakes have been proven by many experts.", True),
    ("The early bird catches the worm", False),  # a statement, but no "is / has ...": missed, by design
    ("Anna is twice as old as Ben. How old is Anna if Ben is 7?", False),
    ("The following sentence has an error. Fix it.", False),
    ("Most people believe the earth is flat. Refute this claim.", False),  # a later sentence may ask
    ("Given a list of numbers, find the largest.", False),
    ("In the passage below, underline every verb.", False),
    ("Your task is to write a poem about the sea.", False),
    ('"The quick brown fox." Count the vowels in this sentence.', False),
    ("The sentence contains an error (fix it).", False),
    ("The code below throws an error -- help me.", False),
    ("A haiku about the ocean.", False),  # noun phrases ask too
    ("The pros and cons of nuclear energy.", False),
    ("10 ways to save money on groceries.", False),
    ("A list of things that are red.", False),
    ("The tone of the email should be changed to a more professional one.", False),  # an obligation
    ("You are given a tweet and you should decide whether it's offensive.", False),  # addressed to the assistant
    ("There are many projects we can build at home, so let's list some of them.", False),
    ("You can make your holidays greener by following these steps:", False),  # a lead-in
    ("The capital of France is ___.", False),  # a blank to fill
    ("Rephrase the sentence so it is polite.", False),
    ("A partir de este texto, escribe un resumen.", False),
])


def test_statements_are_told_from_tasks(text, statement):
    assert is_statement(text) is statement
    reason = InstructionFilter(FilterConfig())(text)
    assert (reason == "statement_not_task") is statement
    assert InstructionFilter(FilterConfig(drop_statements=False))(text) != "statement_not_task"


def test_other_scripts_are_not_judged_as_statements():
    assert not is_statement("请写一首关于大海的短诗。") and not is_statement("Écris un poème sur la mer.")


def test_no_human_written_task_in_seeds_is_a_statement():
    """784 tasks people wrote (the seed and evaluation files): none may be dropped as a statement.
    (Held out, 710 more were checked once: Self-Instruct's seed and user-oriented tasks, T0 prompts.)"""
    from generator.seeds import load_seeds

    folder = Path(__file__).resolve().parents[1] / "seeds"
    tasks = [s.instruction for f in ("seed_tasks", "paper_sized_seeds", "eval_set", "verifiable_eval", "test_seeds")
             for s in load_seeds(folder / f"{f}.jsonl")]
    assert len(tasks) == 784
    assert [t for t in tasks if is_statement(t)] == []


def test_instance_filters():
    cfg = FilterConfig()
    kept, reasons, task = clean_instances([
        {"input": "", "output": ""}, {"input": "same", "output": "same"}, {"input": "x", "output": "Answer:"},
        {"input": "a", "output": "b"}, {"input": "a", "output": "b"}], cfg)
    assert kept == [{"input": "a", "output": "b"}] and task is None
    assert reasons == {"empty_output": 1, "input_equals_output": 1, "cut_field": 1, "duplicate_instance": 1}
    _, _, task = clean_instances([{"input": "q", "output": "yes"}, {"input": "q", "output": "no"}], cfg)
    assert task == "conflicting_outputs"


# -- templates ------------------------------------------------------------------------------------


def _write_template(tmp_path, body: str):
    (tmp_path / "classify.jinja").write_text("{# parser: yes_no #}\n" + body)
    return load_templates(tmp_path)["classify"]


def test_sandbox_blocks_unsafe_attributes(tmp_path):
    t = _write_template(tmp_path, "{% block user %}\n{{ ''.__class__.__mro__ }}{% endblock %}")
    with pytest.raises(UserError, match=r"classify\.jinja line 3: SecurityError"):
        t.render(instruction="x", structured=False)


def test_sandbox_cannot_read_files(tmp_path):
    t = _write_template(tmp_path, "{% block user %}{% include '/etc/passwd' %}{% endblock %}")
    with pytest.raises(UserError, match="classify.jinja"):
        t.render(instruction="x", structured=False)


def test_missing_variable_names_template_and_line(tmp_path):
    t = _write_template(tmp_path, "{% block user %}\nTask: {{ instruction }}\n{{ no_such_var }}{% endblock %}")
    with pytest.raises(UserError, match=r"classify\.jinja line 4: UndefinedError.*no_such_var"):
        t.render(instruction="x", structured=False)


def test_teacher_text_is_data_not_template():
    t = load_templates()["classify"]
    text = "Compute {{ 7 * 7 }} and {% if true %}x{% endif %}"
    assert text in t.render(instruction=text, structured=False).user


def test_every_shipped_template_renders_both_forms():
    ts = load_templates()
    ex = [{"id": "a", "instruction": "Say hi nicely.", "input": "", "output": "Hi!"}]
    variables = {"examples": ex, "num_tasks": 4, "num_instructions": 4, "instruction": "Sort the list.",
                 "max_instances": 3, "start": 2, "input": "", "move": "Ask for a list.", "persona": None,
                 "conversation": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}
    for name, t in ts.items():
        for structured in (True, False):
            p = t.render(structured=structured, **variables)
            assert p.user.strip() and p.completion.strip(), name
            assert p.messages()[-1]["role"] == "user"


def test_template_without_parser_metadata_is_rejected(tmp_path):
    (tmp_path / "alpaca.jinja").write_text("{% block user %}hi{% endblock %}")
    with pytest.raises(UserError, match="parser"):
        load_templates(tmp_path)


# -- seeds ----------------------------------------------------------------------------------------


def test_shipped_seeds_load():
    tasks = load_seeds("seeds/seed_tasks.jsonl", need_instances=True)
    assert len(tasks) >= 100 and 0.2 <= sum(t.is_classification for t in tasks) / len(tasks) <= 0.35


@pytest.mark.parametrize("content,match", [
    ('{"instruction": "ok", "instances": []}\n{"instruction": "x"\n', r"line 2: not valid JSON"),
    ('{"instruction": "ok"}\n{"input": "x"}\n', r"line 2: missing field 'instruction'"),
    ('{"instruction": "   "}\n', r"line 1: field 'instruction' is empty"),
    ('{"instruction": 5}\n', r"line 1: field 'instruction' must be a string"),
    ('{"instruction": "a", "instances": [{"input": "x"}]}\n', r"instances\[0\]: missing field 'output'"),
    ('', r"no tasks"),
])
def test_seed_validation_errors(tmp_path, content, match):
    f = tmp_path / "seeds.jsonl"
    f.write_text(content)
    with pytest.raises(UserError, match=match):
        load_seeds(f)


def test_seed_formats_alpaca_json_csv_parquet(tmp_path):
    rows = [{"instruction": "Add 1 and 2.", "input": "", "output": "3"},
            {"instruction": "Name a color.", "input": "", "output": "Red"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.csv").write_text("instruction,input,output\nAdd 1 and 2.,,3\n,x,y\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    assert [t.instruction for t in load_seeds(tmp_path / "a.json")] == ["Add 1 and 2.", "Name a color."]
    assert load_seeds(tmp_path / "c.parquet")[1].instances == [{"input": "", "output": "Red"}]
    with pytest.raises(UserError, match=r"b\.csv line 3: field 'instruction' is empty"):
        load_seeds(tmp_path / "b.csv")


# -- run directory resume -------------------------------------------------------------------------


@dataclass
class _Cfg:
    out: str
    mode: str = "alpaca"
    num_instructions: int = 5


def _group(iid: str, n: int) -> list[dict]:
    return [{"id": f"{iid}-{i}", "instruction_id": iid, "instruction": f"task {iid}", "input": "",
             "output": str(i), "instance_index": i, "num_instances": n} for i in range(n)]


def test_resume_drops_torn_line_and_incomplete_group(tmp_path):
    run = RunDir(tmp_path).open(_Cfg(str(tmp_path)), {})
    run.write_group(_group("a", 2))
    run.write_group(_group("b", 3))
    run.close()
    data = (tmp_path / "data.jsonl").read_bytes()
    lines = data.split(b"\n")
    # crash: group b's third line was cut half-way
    (tmp_path / "data.jsonl").write_bytes(b"\n".join(lines[:4]) + b"\n" + lines[4][:10])
    run2 = RunDir(tmp_path).open(_Cfg(str(tmp_path)), {})
    assert [r["id"] for r in run2.records] == ["a-0", "a-1"]
    assert any("torn" in n for n in run2.notes)
    run2.write_group(_group("c", 1))
    run2.close()
    ids = [json.loads(line)["id"] for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    assert ids == ["a-0", "a-1", "c-0"]


def test_resume_with_changed_settings_needs_force(tmp_path):
    run = RunDir(tmp_path).open(_Cfg(str(tmp_path)), {"seeds": "aa"})
    run.write_group(_group("a", 1))
    run.close()
    RunDir(tmp_path).open(_Cfg(str(tmp_path), num_instructions=50), {"seeds": "aa"}).close()  # target may grow
    with pytest.raises(UserError, match=r"different settings \(mode\).*--force"):
        RunDir(tmp_path).open(_Cfg(str(tmp_path), mode="self-instruct"), {"seeds": "aa"})
    with pytest.raises(UserError, match=r"different settings \(seeds \(its content changed\)\)"):
        RunDir(tmp_path).open(_Cfg(str(tmp_path)), {"seeds": "bb"})
    RunDir(tmp_path).open(_Cfg(str(tmp_path), mode="self-instruct"), {"seeds": "aa"}, force=True).close()


def test_a_setting_newer_than_the_run_resumes_at_its_default(tmp_path):
    """A run saved before a setting existed resumes when the setting is at its default (it had
    that behaviour then), and asks for --force when it is not."""
    import yaml

    run = RunDir(tmp_path).open(_Cfg(str(tmp_path)), {})
    run.write_group(_group("a", 1))
    run.close()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["config"]["mode"]  # as if `mode` were added after this run was made
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    RunDir(tmp_path).open(_Cfg(str(tmp_path)), {}).close()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    with pytest.raises(UserError, match=r"different settings \(mode\)"):
        RunDir(tmp_path).open(_Cfg(str(tmp_path), mode="self-instruct"), {})


def test_corrupt_line_in_the_middle_is_an_error(tmp_path):
    RunDir(tmp_path).open(_Cfg(str(tmp_path)), {}).close()
    (tmp_path / "data.jsonl").write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(UserError, match="data.jsonl line 2: corrupt"):
        RunDir(tmp_path).open(_Cfg(str(tmp_path)), {})


# -- decontamination ------------------------------------------------------------------------------


def test_decontaminator_13gram_and_rouge():
    from generator.decontam import Decontaminator

    bench = "Explain in simple terms why the sky looks blue on a clear day and red at sunset for kids"
    d = Decontaminator([bench])
    # shares 13 consecutive words but is long enough that ROUGE-L stays under 0.7
    leak = ("Write a long story for my class where a teacher has to explain in simple terms why the sky looks "
            "blue on a clear day and red at sunset to a group of curious students on a trip")
    assert d.check(leak) == "contaminated_13gram"
    assert d.check("Explain in simple terms why the sky looks blue on clear days and red at sunset for kids") == \
        "contaminated_rouge"
    assert d.check("List three fruits that grow on trees.") is None


def test_seeds_read_by_the_one_reader_take_every_format(tmp_path):
    """--seeds takes what --data takes (generator/rows.py): an HF datasets folder, parquet, a
    JSON list, JSON lines saved as .json -- the same rows, the same tasks."""
    import datasets

    from generator.seeds import load_seeds

    rows = [{"instruction": "Say hi.", "input": "", "output": "hi"},
            {"instruction": "Name a fruit.", "input": "", "output": "A pear."}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "s.parquet"))
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("hf", "s.parquet", "list.json", "lines.json"):
        assert [t.instruction for t in load_seeds(tmp_path / name)] == ["Say hi.", "Name a fruit."], name


def test_a_run_from_before_content_hashes_resumes(tmp_path):
    """config.yaml written before `inputs` existed held only template hashes: such a run resumes
    when those match, and is refused when a template changed."""
    import yaml

    run = RunDir(tmp_path).open(_Cfg(str(tmp_path)), {"template respond": "t1", "seeds": "s"})
    run.write_group(_group("a", 1))
    run.close()
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del cfg["inputs"]
    cfg["templates"] = {"respond": "t1"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError, match=r"template respond \(its content changed\)"):
        RunDir(tmp_path).open(_Cfg(str(tmp_path)), {"template respond": "t2", "seeds": "s"})
    RunDir(tmp_path).open(_Cfg(str(tmp_path)), {"template respond": "t1", "seeds": "s"}).close()
    assert "inputs" in yaml.safe_load((tmp_path / "config.yaml").read_text())


@pytest.mark.parametrize("stage, body, expect", [
    ("respond", "{#- parser: nope -#}\n{% block user %}hi{% endblock %}\n", "unknown parser 'nope'"),
    ("alpaca", "{#- parser: response -#}\n{% block user %}hi{% endblock %}\n", "does not fit the alpaca stage"),
])
def test_template_parser_is_checked_before_any_request(tmp_path, stage, body, expect):
    from generator.templates import load_templates

    (tmp_path / "t.jinja").write_text(body)
    with pytest.raises(UserError, match=expect):
        load_templates(None, {stage: str(tmp_path / "t.jinja")})


@pytest.mark.parametrize("expr", ["1 / 0", "[1][5]", "{}['k']", "'abc'.index('z')"])
def test_template_runtime_error_names_the_template_line(tmp_path, expr):
    from generator.templates import load_templates

    (tmp_path / "t.jinja").write_text("{#- parser: response -#}\n{% block user %}\n{{ " + expr + " }}{% endblock %}\n")
    t = load_templates(None, {"respond": str(tmp_path / "t.jinja")})["respond"]
    with pytest.raises(UserError, match=r"t\.jinja line \d"):
        t.render(instruction="x", input="")


def test_an_instance_copied_from_the_prompts_worked_examples_is_rejected():
    """Seen on the 135M teacher: "Identify the logical fallacy in the argument." with the input
    "x = price * 0.2" and "Which genre fits this book" with "The old lighthouse keeper" -- both
    from the instance prompt's own worked examples. Rejected when 8+ characters of the input or the
    output are found there (case and spacing aside); a short field or the task's own words pass."""
    from generator.templates import load_templates

    prompt = load_templates()["instances_input_first"].render(instruction="Identify the logical fallacy.",
                                                               max_instances=2, structured=False)
    shots = " ".join(m["content"] for m in prompt.messages()).replace("Identify the logical fallacy.", " ")
    insts = [{"input": "x = price * 0.2", "output": "A false dilemma."},           # a shot's input
             {"input": "All cats are grey.", "output": "the OLD  lighthouse keeper"},  # a shot's output
             {"input": "Everyone does it, so it must be right.", "output": "Bandwagon."},
             {"input": "", "output": "20 °C"}]                                           # short: kept
    kept, reasons, task = clean_instances(insts, FilterConfig(), shots)
    assert reasons == {"copies_prompt_example": 2} and task is None
    assert [k["output"] for k in kept] == ["Bandwagon.", "20 °C"]
    assert clean_instances(insts, FilterConfig())[1] == {}  # no prompt given: nothing to compare
