"""The record: one line of a run's data.jsonl, the contract between generation and training.

Fields are documented here once (docs/records.md shows them with examples); the pipeline writes
them, export / score / train / eval read them. Also the one Alpaca -> chat mapping: an
instruction and its input become ONE user turn, the input after a blank line -- what the
training examples, the exports, the scorer and the eval prompts all must agree on, or a student
is trained on one prompt shape and evaluated on another.
"""

from __future__ import annotations

from typing import TypedDict


class Record(TypedDict, total=False):
    id: str  # "<instruction_id>-<instance_index>"
    instruction: str  # as asked, with any appended constraint phrasing
    input: str  # "" when the task has none
    output: str  # the kept answer (the selected candidate when responses were sampled)
    instance_index: int  # 0..num_instances-1 within one instruction
    num_instances: int  # records written together for this instruction (resume checks the group)
    instruction_id: str
    base_instruction: str  # the instruction before constraints were appended
    constraints: list[dict]  # [{type, params, text}], checked by generator/verifiers.py
    candidates: list[dict]  # every sampled answer with its checks and scores
    selected: int  # index of the kept candidate
    scores: dict  # of the kept candidate, by scorer
    is_classification: bool
    mode: str  # alpaca | self-instruct | magpie
    templates: dict  # template name and sha256 per stage used
    teacher: dict  # model, endpoint (redacted), api, structured
    sampling: dict  # the instruction stage's sampling settings
    examples: list  # ids of the seeds / machine tasks shown in the prompt
    most_similar: list  # nearest pool instructions with their ROUGE-L
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    created_at: str
    run_id: str
    system_prompt: str  # magpie: the system turn the request was written under (when one steered it)
    persona: str  # magpie with --personas: who the user was
    # multi-turn runs (--turns above 1; generator/conversation.py)
    num_turns: int  # assistant turns in the conversation (1 when it ended after the first)
    messages: list[dict]  # the whole conversation, user and assistant turns (only when num_turns > 1)
    turns: list[dict]  # per turn after the first: move, followup, candidates, selected, scores, response


def user_turn(instruction: str, input: str = "") -> str:
    """The user's message for an (instruction, input) pair; an input of only whitespace is none."""
    return f"{instruction}\n\n{input}" if input and input.strip() else instruction


def to_messages(instruction: str, input: str, output: str) -> list[dict]:
    return [{"role": "user", "content": user_turn(instruction, input)}, {"role": "assistant", "content": output}]
