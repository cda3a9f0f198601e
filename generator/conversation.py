"""Multi-turn data (`--turns K` or `--turns A-B`): a kept first turn grows into a conversation.

Per extra turn, two requests to the teacher:

1. the follow-up, written one of two ways (`--followup`):
   - magpie (the default when Sprout can render the teacher's chat template): the conversation is
     rendered with the chat template up to the opening of the next user turn, after a system turn
     saying the user follows up (Magpie's multi-turn recipe), and the teacher continues it through
     the completion API -- it writes as the user because that is where the template has it;
   - template: the teacher is asked, in a chat request, to play the user (prompts/followup.jinja,
     replaceable) -- for teachers whose chat template Sprout cannot render (a remote API).
   Either way it is told which kind of follow-up to write (`MOVES`: clarify, go deeper, change a
   requirement, another format -- drawn per turn, so conversations do not all ask "tell me
   more"). Several samples; of those that pass `followup_reasons`, the one sharing most words
   with the conversation is kept (it follows from it). Seen on the embedded 135M teacher: asked
   to play the user it mostly wrote as the assistant ("I'm ready to help. What do you need?") or
   wrote about the task ("The user's next message was: ..."); continuing the template it wrote
   user questions ("Could you add more detail about 'Lemon Lime'?");
2. the answer: the respond stage's system turn + the conversation so far + the follow-up, N
   samples, through the same scorer and checks as a first-turn answer (empty, cut, repetitive,
   echo, deflection; relevance to the first request and the follow-up), the best kept.

A turn that fails either step ends the conversation at the last good turn; the failure is
counted by reason in stats.json / rejected.jsonl (`followup_*`, or `turn_` + the answer's
reason) and the record keeps the turns before it. Novelty and decontamination apply to the first
user turn only (the follow-ups are about the answer, not new tasks).

The record gets `messages` (every user and assistant turn, no system turn: the student learns
the conversation, not the teacher's prompt -- as for single turns) and `turns` (per extra turn:
its move, the follow-up, the candidates and the kept index). The trainer supervises every
assistant turn of `messages`; the Alpaca columns keep the first turn."""

from __future__ import annotations

import re

# The kinds of follow-up a real user writes (the list): "the user <move>".
MOVES = {
    "clarify": "asks about something in the assistant's last answer that was unclear to them.",
    "deeper": "asks the assistant to go deeper into one specific point of its last answer.",
    "constraint": "changes one requirement and asks again: shorter, simpler, for a different reader, or with a "
                  "limit of their choice.",
    "format": "asks for the same content in a different format: a numbered list, a table, one sentence, "
              "or an email.",
}
# Magpie's multi-turn system turn (Xu et al. 2024), plus the move and the persona
MAGPIE_FOLLOWUP_SYSTEM = ("You are a helpful AI assistant. The user will engage in a multi-round conversation with "
                          "you, asking initial questions and following up with additional related questions. "
                          "In the next message the user {move}")
FOLLOWUP_SAMPLES = 3
FOLLOWUP_MAX_TOKENS = 128
# An assistant's voice or words about the task, not a user's message: what a small teacher writes
# when asked to play the user (seen on the embedded model, see above)
_NOT_USER = re.compile(r"^(?:sure|certainly|of course|absolutely)\b|i'?m (?:here|ready|happy|glad|eager) to "
                       r"(?:help|assist)|how (?:can|may) i (?:help|assist)|what can i (?:help|do for) you|"
                       r"feel free to ask|(?:the )?(?:user'?s )?next message|the conversation so far|^(?:the )?user\b",
                       re.I)
_ROLE_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:user|me|human|person)(?:\*\*)?\s*[:\-]\s*(?:\*\*)?\s*", re.I)
_ASSISTANT_TURN = re.compile(r"\n\s*(?:\*\*)?(?:assistant|ai|bot)(?:\*\*)?\s*:", re.I)


def followup_method(setting: str, tokenizer) -> str:
    """magpie or template for --followup auto | magpie | template (see the module docstring)."""
    from generator.errors import UserError

    renderable = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if setting == "magpie" and not renderable:
        raise UserError("--followup magpie needs the teacher's chat template: serve a local HF folder with vLLM "
                        "(sprout generate starts one by default), or use --followup template")
    return "magpie" if setting == "magpie" or (setting == "auto" and renderable) else "template"


def parse_turns(value) -> tuple[int, int]:
    """`--turns 3` -> (3, 3); `--turns 2-4` -> (2, 4): assistant turns per conversation."""
    from generator.errors import UserError

    text = str(value).strip()
    m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", text)
    if not m:
        raise UserError(f"--turns {value!r}: a number of assistant turns (3) or a range (2-4)")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 1 <= lo <= hi <= 8:
        raise UserError(f"--turns {value!r}: between 1 and 8 turns, the smaller number first")
    return lo, hi


def clean_followup(text: str) -> str:
    """The user's message alone: without a "User:" label, surrounding quotes, or an assistant turn
    the teacher went on to write."""
    text = _ASSISTANT_TURN.split("\n" + text.strip(), maxsplit=1)[0].strip()
    text = _ROLE_PREFIX.sub("", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def followup_reasons(text: str, finish_reason: str, conversation: list[dict], max_words: int = 150) -> list[str]:
    """Why a follow-up cannot be the next user turn."""
    from generator.novelty import rouge_l

    if len(text.split()) < 2:
        return ["followup_empty"]
    if finish_reason == "length" or len(text.split()) > max_words:
        return ["followup_too_long"]
    users = [m["content"] for m in conversation if m["role"] == "user"]
    if any(rouge_l(text, u) >= 0.7 for u in users):
        return ["followup_repeats"]  # the first request again: not a follow-up
    if rouge_l(text, conversation[-1]["content"]) >= 0.7:
        return ["followup_echoes_answer"]
    if _NOT_USER.search(text):
        return ["followup_not_user_voice"]
    return []


def on_topic(text: str, conversation: list[dict]) -> float:
    """Share of the follow-up's content words that the conversation used: it follows from it."""
    from generator.scoring import content_words

    words = content_words(text)
    said = set().union(*(content_words(m["content"]) for m in conversation))
    return len(words & said) / len(words) if words else 0.0


async def _followup(p, messages: list[dict], move: str, persona: str | None):
    """The teacher's follow-up reply (a Completion), or None when the prompt does not fit or the
    request was refused (both counted)."""
    if p.followup_method == "magpie":
        system = MAGPIE_FOLLOWUP_SYSTEM.format(move=MOVES[move]) + (f" The user is {persona}." if persona else "")
        prompt, stops = p.magpie_prompt(system, messages)
        extra = {"stop": stops, **p.judged()}  # judged by --min-request-logprob, like a magpie request
    else:
        prompt, extra = p.render("followup", {"conversation": messages, "move": MOVES[move], "persona": persona},
                                 False), {}
    max_tokens = p.budget.fit(prompt, FOLLOWUP_MAX_TOKENS, 16)
    if max_tokens is None:
        p.reject({"stage": "followup", "turn": len(messages) // 2 + 1}, "prompt_too_long")
        return None
    kwargs = {"n": FOLLOWUP_SAMPLES, "max_tokens": max_tokens, "temperature": 1.0, "top_p": 0.99, **extra}
    if p.followup_method == "magpie":
        p.requests += 1  # request_raw leaves counting to the caller
        return await p.request_raw("followup", prompt, **kwargs)
    return await p.request("followup", prompt, **kwargs)


async def extend(p, conversation: list[dict], turns: int, persona: str | None) -> tuple[list[dict], list[dict]]:
    """Grow `conversation` ([user, assistant]) to up to `turns` assistant turns with the pipeline
    `p`'s teacher, scorer and budget. Returns (messages, per-turn details); stops at the first
    turn that fails, counting why."""
    messages, details = list(conversation), []
    for _ in range(turns - 1):
        move = p.rng.choice(sorted(MOVES))
        out = await _followup(p, messages, move, persona)
        if out is None:
            break
        tried = [(clean_followup(t), f) for t, f in zip(out.texts, out.finish_reasons)]
        why = [followup_reasons(t, f, messages, p.cfg.max_words) for t, f in tried]
        for i, w in enumerate(why):
            mean = out.mean_logprob(i)
            if not w and mean is not None and mean < p.cfg.min_request_logprob:
                w.append("followup_unlikely")
        ok = [t for (t, _), w in zip(tried, why) if not w]
        if not ok:
            p.reject({"stage": "followup", "turn": len(details) + 2, "move": move,
                      "raw": [t for t, _ in tried]}, why[0][0])
            break
        followup = max(ok, key=lambda t: on_topic(t, messages))  # max keeps the first of equals
        # the respond stage's own prompt (its system turn), with the conversation before the new user turn
        rendered = p.render("respond", {"instruction": followup, "input": ""}, False)
        system = [m for m in rendered if m["role"] == "system"]
        ask = system + messages + [{"role": "user", "content": followup}]
        max_tokens = p.budget.fit(ask, p.cfg.response_max_tokens, 48)
        if max_tokens is None:
            p.reject({"stage": "respond", "turn": len(details) + 2}, "prompt_too_long")
            break
        sampling = {"n": p.cfg.responses, "temperature": p.cfg.response_temperature,
                    "top_p": p.cfg.response_top_p, "max_tokens": max_tokens}
        # relevance to the conversation's topic and to the follow-up; checks against the follow-up
        answered = await p.answer(ask, sampling, messages[0]["content"] + "\n" + followup, followup, "", [])
        if answered is None:
            break
        cands, best, reason, model = answered
        if best is None:
            p.reject({"stage": "respond", "turn": len(details) + 2, "followup": followup, "candidates": cands},
                     "turn_" + (reason or "no_response"))
            break
        messages += [{"role": "user", "content": followup}, {"role": "assistant", "content": cands[best]["text"]}]
        details.append({"move": move, "followup": followup, "followup_method": p.followup_method,
                        "candidates": cands, "selected": best,
                        "scores": cands[best]["scores"], "response": {**sampling, "model": model}})
    return messages, details
