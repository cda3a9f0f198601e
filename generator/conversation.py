"""Multi-turn data (`--turns K` or `--turns A-B`): a kept first turn grows into a conversation.

Per extra turn, two requests to the teacher:

1. the follow-up: the teacher plays the user (prompts/followup.jinja, replaceable) and writes the
   next user message, told which kind of follow-up to write (`MOVES`: clarify, go deeper, change a
   requirement, ask for another format -- drawn per turn, so conversations do not all ask "tell
   me more"); two samples, the first that passes `followup_reasons` is used;
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

# The kinds of follow-up a real user writes (the list); the template gets one sentence.
MOVES = {
    "clarify": "Ask about something in the assistant's last answer that was unclear or that you want explained.",
    "deeper": "Ask the assistant to go deeper into one specific point of its last answer.",
    "constraint": "Change one requirement and ask again: shorter, simpler, for a different reader, or with a "
                  "limit of your choice.",
    "format": "Ask for the same content in a different format: a numbered list, a table, one sentence, "
              "or an email.",
}
FOLLOWUP_SAMPLES = 2
FOLLOWUP_MAX_TOKENS = 128
_ROLE_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:user|me|human|person)(?:\*\*)?\s*[:\-]\s*(?:\*\*)?\s*", re.I)
_ASSISTANT_TURN = re.compile(r"\n\s*(?:\*\*)?(?:assistant|ai|bot)(?:\*\*)?\s*:", re.I)


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
    return []


async def extend(p, conversation: list[dict], turns: int, persona: str | None) -> tuple[list[dict], list[dict]]:
    """Grow `conversation` ([user, assistant]) to up to `turns` assistant turns with the pipeline
    `p`'s teacher, scorer and budget. Returns (messages, per-turn details); stops at the first
    turn that fails, counting why."""
    from generator.scoring import new_candidate

    messages, details = list(conversation), []
    for _ in range(turns - 1):
        move = p.rng.choice(sorted(MOVES))
        variables = {"conversation": messages, "move": MOVES[move], "persona": persona}
        prompt = p._render("followup", variables, False)
        max_tokens = p.budget.fit(prompt, FOLLOWUP_MAX_TOKENS, 16)
        if max_tokens is None:
            p._reject({"stage": "followup", "turn": len(details) + 2}, "prompt_too_long")
            break
        out = await p._request("followup", prompt, n=FOLLOWUP_SAMPLES, max_tokens=max_tokens,
                               temperature=p.cfg.response_temperature, top_p=p.cfg.response_top_p)
        if out is None:  # a refused request: counted as bad_request
            break
        tried = [(clean_followup(t), f) for t, f in zip(out.texts, out.finish_reasons)]
        why = [followup_reasons(t, f, messages, p.cfg.max_words) for t, f in tried]
        ok = [t for (t, _), w in zip(tried, why) if not w]
        if not ok:
            p._reject({"stage": "followup", "turn": len(details) + 2, "move": move,
                       "raw": [t for t, _ in tried]}, why[0][0])
            break
        followup = ok[0]
        # the respond stage's own prompt (its system turn), with the conversation before the new user turn
        rendered = p._render("respond", {"instruction": followup, "input": ""}, False)
        system = [m for m in rendered if m["role"] == "system"]
        ask = system + messages + [{"role": "user", "content": followup}]
        max_tokens = p.budget.fit(ask, p.cfg.response_max_tokens, 48)
        if max_tokens is None:
            p._reject({"stage": "respond", "turn": len(details) + 2}, "prompt_too_long")
            break
        sampling = {"n": p.cfg.responses, "temperature": p.cfg.response_temperature,
                    "top_p": p.cfg.response_top_p, "max_tokens": max_tokens}
        answer = await p._request("respond", ask, **sampling)
        if answer is None:
            break
        cands = [new_candidate(t, f) for t, f in zip(answer.texts, answer.finish_reasons)]
        # relevance to the conversation's topic and to the follow-up; checks against the follow-up
        best, reason = await p.scorer(messages[0]["content"] + "\n" + followup, followup, "", cands, [])
        p.candidates += len(cands)
        p.passing += sum(1 for c in cands if not c["reasons"])
        if best is None:
            p._reject({"stage": "respond", "turn": len(details) + 2, "followup": followup, "candidates": cands},
                      "turn_" + (reason or "no_response"))
            break
        messages += [{"role": "user", "content": followup}, {"role": "assistant", "content": cands[best]["text"]}]
        details.append({"move": move, "followup": followup, "candidates": cands, "selected": best,
                        "scores": cands[best]["scores"], "response": {**sampling, "model": answer.model}})
    return messages, details
