"""The teacher calls of the generation pipeline: rendering a stage's prompt, fitting it into the
context window, sending it, parsing the reply.

`TeacherCalls` is mixed into `generator.pipeline.Pipeline`; its methods are part of the surface
that generator/modes.py and generator/conversation.py use on the running pipeline `p`:

- `render`, `prompt_text`, `fit`: a stage's prompt as sent (chat messages or completion text),
  as one text, and cut down to fit the context window;
- `request` (counted per request, or at a unit's launch) and `request_raw` (always the completion
  API, counted by the caller): one request, a server refusal counted as `bad_request`;
- `ask`: fit, request (structured or with stop strings), parse, count parse failures and cuts;
- `unit_request`: a unit's first `ask`, with the pipeline's in-flight bookkeeping;
- `magpie_prompt`, `judged`: Magpie's pre-query and the log-prob request parameters.

They use the pipeline's `cfg`, `templates`, `client`, `budget`, `structured`, `params`, its
`requests` / `awaiting` / `replies` counters and its `reject` (one rejected.jsonl row).
"""

from __future__ import annotations

from generator.client import BadRequest, Completion
from generator.parsing import PARSERS, Parsed, response_format
from generator.templates import Template

# Smallest completion worth asking for, per stage: below it a reply cannot hold one item.
MIN_COMPLETION = {"alpaca": 128, "bootstrap": 48, "classify": 1, "instances_input_first": 48,
                  "instances_output_first": 48, "respond": 48}


class TeacherCalls:
    """Teacher requests for `Pipeline` (see the module docstring for what it must provide)."""

    def render(self, stage: str, variables: dict, structured: bool):
        prompt = self.templates[stage].render(structured=structured, **variables)
        return prompt.completion if self.cfg.api == "completion" else prompt.messages()

    def prompt_text(self, stage: str, variables: dict) -> str:
        """The request as sent, as one text (chat messages joined), for the copy checks."""
        rendered = self.render(stage, variables, self.structured)
        return rendered if isinstance(rendered, str) else " ".join(m["content"] for m in rendered)

    def fit(self, stage: str, variables: dict, wanted: int, structured: bool,
            examples: list | None = None) -> tuple[dict, int] | None:
        """(variables, max_tokens) that fit the context window, dropping examples from the end
        while the prompt is too long; None (counted as prompt_too_long) when nothing fits."""
        while True:
            tokens = self.budget.fit(self.render(stage, variables, structured), wanted, MIN_COMPLETION[stage])
            if tokens is not None:
                return variables, tokens
            if not examples or len(variables["examples"]) <= 1:
                self.reject({"stage": stage, **{k: v for k, v in variables.items() if k != "examples"}},
                            "prompt_too_long")
                return None
            variables = {**variables, "examples": variables["examples"][:-1]}
            if "start" in variables:
                variables["start"] = len(variables["examples"]) + 1

    async def request(self, stage: str, prompt, first: bool = False, **kwargs) -> Completion | None:
        """Send one request; a request the server refuses (400/413/422) is one `bad_request`."""
        if not first:  # a unit's first request was counted when the unit was launched
            self.requests += 1
        try:
            if self.cfg.api == "completion":
                return await self.client.complete(prompt, stage=stage, **kwargs)
            return await self.client.chat(prompt, stage=stage, **kwargs)
        except BadRequest as e:
            self.reject({"stage": stage, "status": e.status, "message": e.detail}, "bad_request")
            return None

    async def request_raw(self, stage: str, prompt: str, **kwargs) -> Completion | None:
        """A completion request whatever --api says (Magpie continues a raw chat-template prefix);
        counted at the unit's launch."""
        try:
            return await self.client.complete(prompt, stage=stage, **kwargs)
        except BadRequest as e:
            self.reject({"stage": stage, "status": e.status, "message": e.detail}, "bad_request")
            return None

    async def ask(self, stage: str, variables: dict, max_tokens: int, stop: list[str] | None = None,
                  structured: bool | None = None, first: bool = False, examples: bool = False,
                  **params) -> tuple[Completion, Parsed, Template, dict] | None:
        tmpl = self.templates[stage]
        structured = self.structured if structured is None else structured
        fitted = self.fit(stage, variables, max_tokens, structured, variables.get("examples") if examples else None)
        if fitted is None:
            return None
        variables, max_tokens = fitted
        kwargs = {"max_tokens": max_tokens, **params}
        if structured:
            # chat takes OpenAI's response_format; vLLM's completion endpoint takes the same
            # field, which the openai client only passes through extra_body
            fmt = response_format(tmpl.parser)
            if self.cfg.api == "completion":
                kwargs["extra_body"] = {"response_format": fmt}
            else:
                kwargs["response_format"] = fmt
        elif stop and self.cfg.api == "completion":
            # The papers' stop sequences end a *continued* list; a chat reply is not a
            # continuation and often opens with "Task:" or a blank line, so chat gets none.
            kwargs["stop"] = stop
        out = await self.request(stage, self.render(stage, variables, structured), first, **kwargs)
        if out is None:
            return None
        start = variables.get("start") if self.cfg.api == "completion" else None
        extra = {"task": variables["instruction"]} if tmpl.parser in ("instances", "labeled_instances") else {}
        parsed = PARSERS[tmpl.parser](out.texts[0], out.finish_reasons[0], structured, start, **extra)
        for i in range(parsed.failures):
            self.reject({"stage": stage, "raw": out.texts[0][:2000] if i == 0 else "(same reply)"}, "parse_error")
        for _ in range(parsed.cut):
            self.reject({"stage": stage, "raw": out.texts[0][-300:]}, "cut_by_length_limit")
        return out, parsed, tmpl, variables

    async def unit_request(self, stage: str, variables: dict, stop: list[str]):
        """A unit's first request (counted at launch), with examples that may be dropped to fit;
        it no longer awaits a reply once this returns, and a parsed reply counts for the yield."""
        p = self.params
        try:
            asked = await self.ask(stage, variables, p["max_tokens"], stop=stop, first=True, examples=True,
                                   temperature=p["temperature"], top_p=p["top_p"],
                                   presence_penalty=p["presence_penalty"])
        finally:
            self.awaiting -= 1
        if asked is not None:
            self.replies += 1
        return asked

    def magpie_prompt(self, system_prompt: str | None, history: list[dict] = ()) -> tuple[str, list[str]]:
        """The chat template rendered (after `history`, for a follow-up) up to where the user's words
        would start, and the stop strings that end a user turn. Needs the teacher's tokenizer (a
        local model folder)."""
        from generator.errors import UserError

        tok = self.budget.tokenizer
        if tok is None or not getattr(tok, "chat_template", None):
            raise UserError("--mode magpie needs the teacher's chat template: serve a local HF folder with vLLM "
                            "(sprout generate starts one by default) so Sprout can read its tokenizer")
        marker = "\x00SPROUT-USER-TURN\x00"
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        rendered = tok.apply_chat_template(msgs + list(history) + [{"role": "user", "content": marker}],
                                           tokenize=False)
        head, _, tail = rendered.partition(marker)
        stops = [x for x in {tail.strip().split("\n")[0].strip(), tok.eos_token or ""} if x]
        return head, stops

    def judged(self) -> dict:
        """Request parameters that bring back the sampled tokens' log-probs, which
        --min-request-logprob judges a written request by (none asked for when it is -inf)."""
        return {"logprobs": 0} if self.cfg.min_request_logprob > float("-inf") else {}
