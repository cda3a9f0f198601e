"""Chat formatting and the loss mask, on the embedded model's real tokenizer (no model load)."""

from __future__ import annotations

import pytest

from trainer.data import Fields, to_example
from trainer.format import ALPACA_PREAMBLE, ALPACA_PREAMBLE_INPUT, IGNORE, Formatter, encode_all

IM_END = 2  # <|im_end|>, SmolLM2's EOS and end-of-turn token


@pytest.fixture(scope="module")
def tok(embedded_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_model)


@pytest.fixture()
def plain_tok(embedded_model):
    """The same tokenizer without a chat template: a base model's situation."""
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(embedded_model)
    t.chat_template = None
    return t


def ex(record):
    return to_example(record, "test row 1", Fields())


def supervised(enc):
    return [t for t, lab in zip(enc.input_ids, enc.labels) if lab != IGNORE]


def runs(enc):
    """Contiguous runs of supervised token ids."""
    out, cur = [], []
    for t, lab in zip(enc.input_ids, enc.labels):
        if lab != IGNORE:
            assert lab == t  # a supervised label is the token itself (the loss shifts)
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    return out + ([cur] if cur else [])


def test_golden_mask_is_response_plus_end_of_turn(tok):
    response = "The capital of France is Paris. It has about 2.1 million people."
    enc = Formatter(tok).encode(ex({"instruction": "What is the capital of France?", "input": "", "output": response}))
    expected = tok(response, add_special_tokens=False)["input_ids"] + [IM_END]
    assert supervised(enc) == expected
    assert tok.decode(supervised(enc)) == response + "<|im_end|>"
    # One contiguous run, and it is the last assistant turn: only the template's "\n" follows.
    assert len(runs(enc)) == 1
    last = max(i for i, lab in enumerate(enc.labels) if lab != IGNORE)
    assert enc.input_ids[last] == IM_END
    assert tok.decode(enc.input_ids[last + 1:]) == "\n"
    # The whole text is exactly what the chat template renders (nothing added or lost).
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": response}],
        tokenize=False)
    assert tok.decode(enc.input_ids) == rendered


def test_input_field_goes_into_the_user_turn_not_the_loss(tok):
    record = {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"}
    enc = Formatter(tok).encode(ex(record))
    text = tok.decode(enc.input_ids)
    assert "<|im_start|>user\nTranslate to French.\n\nGood morning<|im_end|>" in text
    assert tok.decode(supervised(enc)) == "Bonjour<|im_end|>"


def test_multi_turn_supervises_every_assistant_turn_and_nothing_else(tok):
    record = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue"},
    ]}
    enc = Formatter(tok).encode(ex(record))
    got = [tok.decode(r) for r in runs(enc)]
    assert got == ["Hello. How can I help?<|im_end|>", "Blue<|im_end|>"]
    assert "Be brief." in tok.decode(enc.input_ids)  # the record's own system turn, not the default
    assert "SmolLM" not in tok.decode(enc.input_ids)


def test_generated_three_turn_record_supervises_each_answer_and_its_end_token(tok):
    """A record as `sprout generate --turns 3` writes it (messages + the first turn's Alpaca
    columns): the loss covers the three answers, each with its <|im_end|>, and no token of the
    three user turns -- the messages win over the Alpaca columns."""
    answers = ["Rain taps the roof.", "1. Rain\n2. Roof", "Short: rain on a roof."]
    users = ["Write one line about rain.", "Now as a list?", "Shorter, please."]
    messages = [m for u, a in zip(users, answers) for m in ({"role": "user", "content": u},
                                                            {"role": "assistant", "content": a})]
    record = {"instruction": users[0], "input": "", "output": answers[0], "num_turns": 3, "messages": messages}
    enc = Formatter(tok).encode(ex(record))
    assert [tok.decode(r) for r in runs(enc)] == [a + "<|im_end|>" for a in answers]
    sup = tok.decode(supervised(enc))
    assert not any(u in sup for u in users) and all(u in tok.decode(enc.input_ids) for u in users)


def test_system_prompt_option(tok):
    record = {"instruction": "Say hi", "output": "Hi"}
    enc = Formatter(tok, system_prompt="You are terse.").encode(ex(record))
    text = tok.decode(enc.input_ids)
    assert text.startswith("<|im_start|>system\nYou are terse.<|im_end|>")
    assert tok.decode(supervised(enc)) == "Hi<|im_end|>"


def test_alpaca_prompt_without_chat_template(plain_tok):
    f = Formatter(plain_tok)
    assert not f.use_template
    enc = f.encode(ex({"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"}))
    text = plain_tok.decode(enc.input_ids)
    assert text == (f"{ALPACA_PREAMBLE_INPUT}\n\n### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n"
                    "### Response:\n5<|im_end|>")
    assert plain_tok.decode(supervised(enc)) == "5<|im_end|>"

    enc = f.encode(ex({"instruction": "Say hello.", "output": "Hello there"}))
    text = plain_tok.decode(enc.input_ids)
    assert text.startswith(f"{ALPACA_PREAMBLE}\n\n### Instruction:\nSay hello.\n\n### Response:\n")
    assert "### Input:" not in text
    assert supervised(enc) == plain_tok("Hello there", add_special_tokens=False)["input_ids"] + [IM_END]


def test_messages_without_chat_template(plain_tok):
    record = {"messages": [{"role": "user", "content": "a?"}, {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "c?"}, {"role": "assistant", "content": "d"}]}
    enc = Formatter(plain_tok).encode(ex(record))
    assert [plain_tok.decode(r) for r in runs(enc)] == ["b<|im_end|>", "d<|im_end|>"]
    assert "### Instruction:\nc?" in plain_tok.decode(enc.input_ids)


def test_template_without_end_token_gets_eos_inserted(plain_tok):
    # A template that ends turns with a plain newline and strips contents: EOS is added after each
    # assistant turn so the model learns to stop, and the stripped content is still found.
    plain_tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}"
                               "{% if add_generation_prompt %}assistant: {% endif %}")
    record = {"messages": [{"role": "user", "content": "one"}, {"role": "assistant", "content": "  two  "},
                           {"role": "user", "content": "three"}, {"role": "assistant", "content": "four"}]}
    enc = Formatter(plain_tok).encode(ex(record))
    assert plain_tok.decode(enc.input_ids) == ("user: one\nassistant: two<|im_end|>\n"
                                               "user: three\nassistant: four<|im_end|>\n")
    # "Ġtwo" straddles the template's space and the response: a token that overlaps the response
    # is supervised (dropping it would lose the response's first token).
    assert [plain_tok.decode(r) for r in runs(enc)] == [" two<|im_end|>", " four<|im_end|>"]


def test_overlong_truncate_and_drop_are_counted(tok):
    f = Formatter(tok)
    short = ex({"instruction": "Hi", "output": "Hello"})
    long = ex({"instruction": "Tell a story", "output": "word " * 200})
    n_short = len(f.encode(short).input_ids)
    kept, stats = encode_all(f, [short, long], max_length=n_short + 5, overlong="truncate")
    assert (stats.total, stats.truncated, stats.dropped) == (2, 1, 0)
    assert len(kept[1].input_ids) == n_short + 5 and kept[1].n_supervised > 0
    kept, stats = encode_all(f, [short, long], max_length=n_short + 5, overlong="drop")
    assert (stats.truncated, stats.dropped, len(kept)) == (0, 1, 1)
    # Truncation that leaves no response token drops the example instead.
    long_prompt = ex({"instruction": "x " * 300, "output": "ok"})
    kept, stats = encode_all(f, [long_prompt], max_length=64, overlong="truncate")
    assert (kept, stats.dropped) == ([], 1)
