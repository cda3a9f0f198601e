"""Fitting every request into the teacher's context window.

A server refuses a request whose prompt plus `max_tokens` exceeds its context length (vLLM: 400,
"maximum context length is N tokens"). Rather than send it, each request's `max_tokens` is lowered
to what the window leaves after the prompt; a prompt that leaves less than a useful completion is
not sent at all (the caller counts it as `prompt_too_long`, or first tries fewer examples).

Where the numbers come from:
- the context length: `--max-model-len` when given, else what vLLM reports in /v1/models
  (`max_model_len`); a server that reports none is assumed unlimited (we cannot know better, and
  its own 400 is then counted as one `bad_request`, not a crash);
- prompt tokens: the teacher's own tokenizer (with its chat template) when the model is a local
  folder -- vLLM reports the folder it serves as the model's `root`; otherwise a deliberately
  conservative estimate of one token per 3 bytes of UTF-8 plus 8 per message (English BPE
  averages ~4 characters a token, so the estimate errs towards shorter completions, not refusals).
"""

from __future__ import annotations

import math
from pathlib import Path

MARGIN = 8  # tokens kept free: special tokens a template adds that a count may miss


class ContextBudget:
    def __init__(self, max_model_len: int | None = None, tokenizer=None):
        self.max_model_len = max_model_len
        self.tokenizer = tokenizer
        self.exact = tokenizer is not None

    @classmethod
    async def discover(cls, client, max_model_len: int | None = None, tokenizer_path: str | None = None
                       ) -> "ContextBudget":
        """Ask the teacher (vLLM's /v1/models) for its context length and local model folder."""
        root = tokenizer_path
        if max_model_len is None or root is None:
            try:
                models = await client.endpoints[0].client.models.list()
                entry = next((m for m in models.data if m.id == client.model), models.data[0] if models.data else None)
            except Exception:  # noqa: BLE001 -- a server without /v1/models: fall back to the estimate
                entry = None
            extra = (getattr(entry, "model_extra", None) or {}) if entry is not None else {}
            if max_model_len is None and isinstance(extra.get("max_model_len"), int):
                max_model_len = extra["max_model_len"]
            if root is None and isinstance(extra.get("root"), str):
                root = extra["root"]
        return cls(max_model_len, _load_tokenizer(root))

    def count(self, prompt: str | list[dict]) -> int:
        if self.tokenizer is not None:
            try:
                if isinstance(prompt, str):
                    return len(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])
                text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
                return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            except Exception:  # noqa: BLE001 -- a template that cannot render: estimate instead
                pass
        if isinstance(prompt, str):
            return math.ceil(len(prompt.encode()) / 3) + 8
        return sum(math.ceil(len(str(m.get("content", "")).encode()) / 3) + 8 for m in prompt) + 8

    def fit(self, prompt: str | list[dict], wanted: int, minimum: int) -> int | None:
        """max_tokens for this prompt: `wanted`, lowered to fit the window; None if under `minimum`."""
        if self.max_model_len is None:
            return wanted
        room = self.max_model_len - self.count(prompt) - MARGIN
        if room < min(minimum, wanted):
            return None
        return min(wanted, room)


def _load_tokenizer(path: str | None):
    if not path or not (Path(path) / "tokenizer_config.json").is_file():
        return None
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception:  # noqa: BLE001 -- an unreadable tokenizer only costs exactness
        return None
