"""Turning an `Example` into token ids plus a loss mask.

The loss covers exactly the response tokens and the token that ends the turn (`<|im_end|>`,
`<|eot_id|>`, `</s>`...). Leaving the end token out is the classic bug: the model never learns to
stop. Text between turns (ChatML's trailing newline, the next header) is not supervised.

How the response spans are found without `{% generation %}` markers (most templates lack them):
render the whole conversation once; for each assistant turn render the conversation up to it with
the generation prompt -- that text is a prefix of the whole -- and look for the turn's content right
after it. The end-of-turn token is the special token the template puts after the content; when the
template puts none there, the tokenizer's EOS is inserted so the model still learns to stop. The
text is tokenized once, and a token is supervised when its characters overlap a response span.

Students without a chat template get the Alpaca prompt ("### Instruction: ... ### Response:"),
the response and EOS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from generator.errors import UserError
from trainer.data import Example

IGNORE = -100  # label of tokens the loss skips (PyTorch's cross_entropy default ignore_index)

ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")
ALPACA_PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                         "further context. Write a response that appropriately completes the request.")


def alpaca_chat_template(system_prompt: str | None = None, bos_token: bool = False) -> str:
    """A Jinja chat template that renders a conversation exactly as `Formatter` renders it for a
    student without a chat template (the Alpaca prompt: a preamble, then one Instruction /
    Response block per turn). The trainer saves it with the adapter, so vLLM's chat endpoint
    (`sprout eval`, `sprout serve`) and HF inference see the prompt the student was trained on,
    not a template of their own or none. `system_prompt` (train's --system-prompt) replaces the
    preamble, as in training; `bos_token`: start with it (for tokenizers that add one to text)."""
    fixed = json.dumps(system_prompt) if system_prompt else "none"
    return (
        ("{{ bos_token }}" if bos_token else "")
        + "{%- set ns = namespace(preamble=" + fixed + ") -%}"
        + "{%- for m in messages if ns.preamble is none and m['role'] == 'system' -%}"
        + "{%- if loop.first %}{% set ns.preamble = m['content'] %}{% endif -%}{%- endfor -%}"
        + "{{ ns.preamble if ns.preamble is not none else " + json.dumps(ALPACA_PREAMBLE) + " }}{{ '\n\n' }}"
        + "{%- for m in messages -%}"
        + "{%- if m['role'] == 'assistant' -%}{{ '### Response:\n' + m['content'] + eos_token + '\n\n' }}"
        + "{%- elif m['role'] != 'system' -%}{{ '### Instruction:\n' + m['content'] + '\n\n' }}{%- endif -%}"
        + "{%- endfor -%}"
        + "{%- if add_generation_prompt %}{{ '### Response:\n' }}{% endif -%}")


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts BOS before plain text (what training's encode gets)."""
    ids = tokenizer("x", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]


# Saved beside the adapter: how to prompt the student as it was trained (read by eval and serve).
PROMPT_FILE = "sprout_prompt.json"
TEMPLATE_FILE = "sprout_chat_template.jinja"  # only for a student trained on the Alpaca prompt


def save_prompt_format(folder: Path, tok, formatter: "Formatter") -> None:
    """Write PROMPT_FILE (and TEMPLATE_FILE where the student has no chat template of its own).
    Call before `tok.save_pretrained(folder)`: `tok` gets the template, so the saved tokenizer
    (PEFT, HF pipelines) prompts the same way too."""
    fmt = {"template": "model" if formatter.use_template else "alpaca", "system_prompt": formatter.system_prompt}
    folder.mkdir(parents=True, exist_ok=True)
    if not formatter.use_template:
        tok.chat_template = alpaca_chat_template(formatter.system_prompt, adds_bos(tok))
        (folder / TEMPLATE_FILE).write_text(tok.chat_template, encoding="utf-8")
    (folder / PROMPT_FILE).write_text(json.dumps(fmt, indent=2), encoding="utf-8")


def read_prompt_format(folder: Path) -> dict:
    """{"template": "model" | "alpaca", "system_prompt": str | None, "template_file": Path | None};
    an adapter from elsewhere (no PROMPT_FILE) is taken to use its base model's chat template."""
    try:
        fmt = json.loads((Path(folder) / PROMPT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        fmt = {}
    template_file = Path(folder) / TEMPLATE_FILE
    alpaca = fmt.get("template") == "alpaca" and template_file.is_file()
    return {"template": "alpaca" if alpaca else "model", "system_prompt": fmt.get("system_prompt") or None,
            "template_file": template_file if alpaca else None}


def chat_template_args(adapters) -> list[str]:
    """vLLM arguments that serve the training prompt of adapters trained on the Alpaca prompt
    (their base has no chat template): ["--chat-template", FILE], or [] when none needs it. vLLM has
    one template per server, so base-model requests get it too."""
    files = {str(f) for a in adapters if (f := read_prompt_format(a)["template_file"])}
    if len(files) > 1:
        raise UserError("--lora: these adapters were trained with different Alpaca prompts (different "
                        "--system-prompt); serve them separately, or pass one with -- --chat-template FILE")
    return ["--chat-template", files.pop()] if files else []


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The conversation as training saw it: the system prompt first, unless it has its own."""
    if system_prompt and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # the token id where supervised, IGNORE elsewhere

    @property
    def n_supervised(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


class Formatter:
    """Renders examples with `tokenizer`'s chat template (or the Alpaca prompt) and masks the loss."""

    def __init__(self, tokenizer, system_prompt: str | None = None, stop_ids: set[int] | None = None):
        self.tok = tokenizer
        self.system_prompt = system_prompt
        self.use_template = bool(getattr(tokenizer, "chat_template", None))
        if not tokenizer.eos_token:
            raise UserError("the student's tokenizer has no EOS token; the model could not learn to stop")
        # End-of-turn candidates: special tokens the model stops on (EOS, generation_config's
        # eos ids) or that are named as an end ("<end_of_turn>", "<|eot_id|>", "<|end|>"). A
        # special token that *opens* the next turn must not be learned as the stop.
        stop_ids = set(stop_ids or ()) | {tokenizer.eos_token_id}
        specials = set(tokenizer.all_special_tokens)
        specials |= {t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special}
        ends = [s for s in specials if s and (tokenizer.convert_tokens_to_ids(s) in stop_ids
                                               or any(w in s.lower() for w in ("end", "eot", "</s>")))]
        self.end_tokens = sorted(ends, key=len, reverse=True)  # longest first: no partial match wins

    # --- rendering: text + character spans to supervise ----------------------------------------
    def render(self, ex: Example) -> tuple[str, list[tuple[int, int]], bool]:
        """(text, supervised character spans, whether the tokenizer adds its own special tokens)."""
        if self.use_template:
            return (*self._render_chat(ex), False)  # templates write BOS themselves
        return (*self._render_alpaca(ex), True)

    def _template(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _render_chat(self, ex: Example) -> tuple[str, list[tuple[int, int]]]:
        messages = with_system_prompt(ex.messages, self.system_prompt)
        try:
            full = self._template(messages, False)
        except Exception as e:  # jinja raises TemplateError for e.g. "roles must alternate"
            raise UserError(f"{ex.where}: the student's chat template rejects this conversation ({e})") from None
        found, cursor = [], 0  # (start, end, needs_eos) per assistant turn, in `full`
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = cursor
            if i > 0:
                try:
                    prefix = self._template(messages[:i], True)
                except Exception:  # some templates refuse a prefix (e.g. one ending on a system turn)
                    prefix = ""
                if len(prefix) >= cursor and full.startswith(prefix):
                    start = len(prefix)
            content = m["content"]
            pos = full.find(content, start)
            if pos < 0:  # templates often strip the content
                content = content.strip()
                pos = full.find(content, start)
            if pos < 0 or not content:
                raise UserError(f"{ex.where}: assistant turn {i} does not appear verbatim in the chat template's "
                                "output, so its tokens cannot be found to supervise")
            end = pos + len(content)
            eot = self._end_token_after(full, end)
            found.append((pos, end, True) if eot is None else (pos, eot, False))
            cursor = found[-1][1]
        # Where the template ends a turn without a special token, insert EOS and shift what follows.
        eos, pieces, spans, last, shift = self.tok.eos_token, [], [], 0, 0
        for pos, end, needs_eos in found:
            if needs_eos:
                pieces.append(full[last:end] + eos)
                last = end
                spans.append((pos + shift, end + shift + len(eos)))
                shift += len(eos)
            else:
                spans.append((pos + shift, end + shift))
        pieces.append(full[last:])
        return "".join(pieces), spans

    def _end_token_after(self, text: str, pos: int) -> int | None:
        """End of the end-of-turn token that follows `pos` (after optional whitespace), if any."""
        rest = text[pos:]
        gap = len(rest) - len(rest.lstrip())
        for s in self.end_tokens:
            if rest.startswith(s, gap):
                return pos + gap + len(s)
        return None

    def _render_alpaca(self, ex: Example) -> tuple[str, list[tuple[int, int]]]:
        eos = self.tok.eos_token
        if ex.alpaca is not None:
            instruction, extra, output = ex.alpaca
            preamble = self.system_prompt or (ALPACA_PREAMBLE_INPUT if extra.strip() else ALPACA_PREAMBLE)
            prompt = f"{preamble}\n\n### Instruction:\n{instruction}\n\n"
            if extra.strip():
                prompt += f"### Input:\n{extra}\n\n"
            prompt += "### Response:\n"
            return prompt + output + eos, [(len(prompt), len(prompt) + len(output) + len(eos))]
        # A chat record for a student without a template: one Instruction/Response block per turn.
        system = [m["content"] for m in ex.messages if m["role"] == "system"]
        text = (self.system_prompt or (system[0] if system else ALPACA_PREAMBLE)) + "\n\n"
        spans = []
        for m in ex.messages:
            if m["role"] == "assistant":
                text += "### Response:\n"
                spans.append((len(text), len(text) + len(m["content"]) + len(eos)))
                text += m["content"] + eos + "\n\n"
            elif m["role"] != "system":
                text += f"### Instruction:\n{m['content']}\n\n"
        return text, spans

    # --- tokenizing -----------------------------------------------------------------------------
    def encode(self, ex: Example) -> Encoded:
        text, spans, add_special = self.render(ex)
        if getattr(self.tok, "is_fast", False):
            enc = self.tok(text, add_special_tokens=add_special, return_offsets_mapping=True)
            ids, offsets = enc["input_ids"], enc["offset_mapping"]
            labels, k = [], 0
            for tid, (s, e) in zip(ids, offsets):
                while k < len(spans) and spans[k][1] <= s:
                    k += 1
                inside = k < len(spans) and e > s and s < spans[k][1] and e > spans[k][0]
                labels.append(tid if inside else IGNORE)
            return Encoded(ids, labels)
        return self._encode_pieces(text, spans, add_special)

    def _encode_pieces(self, text: str, spans: list[tuple[int, int]], add_special: bool) -> Encoded:
        """Tokenizers without offsets: tokenize prompt and response pieces separately."""
        ids, labels, last = [], [], 0
        if add_special and self.tok.bos_token_id is not None:
            ids, labels = [self.tok.bos_token_id], [IGNORE]
        for s, e in spans:
            for piece, supervised in ((text[last:s], False), (text[s:e], True)):
                if piece:
                    piece_ids = self.tok(piece, add_special_tokens=False)["input_ids"]
                    ids += piece_ids
                    labels += piece_ids if supervised else [IGNORE] * len(piece_ids)
            last = e
        if text[last:]:
            tail = self.tok(text[last:], add_special_tokens=False)["input_ids"]
            ids, labels = ids + tail, labels + [IGNORE] * len(tail)
        return Encoded(ids, labels)


@dataclass
class EncodeStats:
    total: int = 0
    truncated: int = 0
    dropped: int = 0  # longer than max_length with --overlong drop, or no response left after truncation


def encode_all(formatter: Formatter, examples: list[Example], max_length: int, overlong: str
               ) -> tuple[list[Encoded], EncodeStats]:
    """Encode and fit every example into `max_length` tokens (truncate keeps the start)."""
    stats = EncodeStats()
    kept = []
    for ex in examples:
        stats.total += 1
        enc, truncated = fit(formatter.encode(ex), max_length, overlong)
        if enc is None:
            stats.dropped += 1
            continue
        stats.truncated += truncated
        kept.append(enc)
    return kept, stats


def fit(enc: Encoded, max_length: int, overlong: str) -> tuple[Encoded | None, bool]:
    """(`enc` cut to `max_length` tokens, whether it was cut); None when it must be dropped."""
    if len(enc.input_ids) <= max_length:
        return enc, False
    if overlong == "drop":
        return None, False
    enc = Encoded(enc.input_ids[:max_length], enc.labels[:max_length])
    if enc.n_supervised == 0:  # the prompt alone fills max_length: nothing to learn from
        return None, False
    return enc, True
