"""Self-Instruct stage 2 for any teacher: get a Yes or a No, never "The task is".

The paper asks for the answer as free text in 3 tokens. A small teacher often opens with
something else ("The task is ..."), which is a parse failure, so the pipeline then guessed "not
classification". Two ways around it, both measured on the seeds' own labels
(tests/replies/measure_classify.py; the numbers are in docs/templates.md):

- guided choice: vLLM decodes under a choice constraint, so the reply IS "Yes" or "No";
- logprob comparison: one token with its top alternatives, and the likelier of Yes / No wins
  (any OpenAI-compatible server that returns logprobs, OpenAI's own API included).

`classify_is_classification` uses guided choice on vLLM, logprobs elsewhere, and reads the free
text as a last resort (a server that returns no logprobs).
"""

from __future__ import annotations

import math

from generator.parsing import parse_yes_no

CHOICES = ("Yes", "No")
# A completion prompt ends with "Is it classification?" and its worked cases answer " Yes" / " No":
# forcing "Yes" without the space makes the model spell the word in tokens it never saw there,
# which was measured to shift answers (0.767 vs 0.800 on the seeds). A chat reply starts fresh.
COMPLETION_CHOICES = (" Yes", " No")
TOP_LOGPROBS = 5


def yes_no_request_params(server_is_vllm: bool, api: str = "chat") -> dict:
    """Request parameters (for TeacherClient.chat / .complete) that make any teacher answer
    Yes or No. vLLM 0.32 spells guided choice `structured_outputs: {"choice": [...]}`; the older
    `guided_choice` field is silently ignored there (checked on the live server), so it is not sent.
    Other servers: one token with its top alternatives, compared by `verdict_from_logprobs`."""
    if server_is_vllm:
        choices = list(CHOICES if api == "chat" else COMPLETION_CHOICES)
        return {"max_tokens": 3, "temperature": 0.0, "extra_body": {"structured_outputs": {"choice": choices}}}
    if api == "chat":
        return {"max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    return {"max_tokens": 1, "temperature": 0.0, "logprobs": TOP_LOGPROBS}


def verdict_from_logprobs(top: dict[str, float] | None) -> bool | None:
    """True / False from one position's {token: logprob}: the likelier of the Yes-like and
    No-like tokens (" Yes", "yes", "YES" all count). None when neither is among them."""
    if not top:
        return None
    mass = {"yes": 0.0, "no": 0.0}
    for token, logprob in top.items():
        word = token.strip().lower()
        if word in mass and logprob is not None:
            mass[word] += math.exp(logprob)
    if mass["yes"] == mass["no"] == 0.0:
        return None
    return mass["yes"] > mass["no"]


def verdict_from_text(text: str) -> bool | None:
    parsed = parse_yes_no(text)
    return parsed.items[0] if parsed.items else None


async def classify_is_classification(client, prompt, api: str = "chat", server_is_vllm: bool = True,
                                     ) -> bool | None:
    """Is the task a classification task? `prompt` is the classify template's rendering: a list
    of chat messages for api="chat", the completion text for api="completion". `client` is a
    generator.client.TeacherClient. None when the teacher's answer could not be read (the
    caller counts it as a parse failure and treats the task as not classification)."""
    params = yes_no_request_params(server_is_vllm, api)
    call = client.chat if api == "chat" else client.complete
    out = await call(prompt, stage="classify", **params)
    if not server_is_vllm:
        top = getattr(out, "top_logprobs", None)
        verdict = verdict_from_logprobs(top[0] if top else None)
        if verdict is not None:
            return verdict
    return verdict_from_text(out.texts[0])
