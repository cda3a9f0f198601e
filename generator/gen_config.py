"""`sprout generate`'s settings: one dataclass, filled from defaults < --config YAML < flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from generator.filters import DEFAULT_BLOCKLIST
from generator.novelty import TOKENIZERS

# The papers' sampling settings. Self-Instruct: bootstrap at temperature 0.7, top_p 0.5, presence
# penalty 2; instances greedy with presence penalty 1.5 (the paper's instance-generation call).
# Alpaca: temperature 1.0, top_p 1.0. (vLLM needs top_p > 0, so "greedy" is temperature 0 with
# top_p 1.)
MODE_DEFAULTS = {
    "alpaca": {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "max_tokens": 1536,
               "instance_max_tokens": 0, "instance_temperature": 0.0, "instance_top_p": 1.0,
               "instance_presence_penalty": 0.0},
    # Magpie samples the user turn at temperature 1 (the paper's setting); a request is one line or
    # a short paragraph, so 128 tokens hold it and a longer one is usually a loop.
    "magpie": {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "max_tokens": 128,
               "instance_max_tokens": 0, "instance_temperature": 0.0, "instance_top_p": 1.0,
               "instance_presence_penalty": 0.0},
    "self-instruct": {"temperature": 0.7, "top_p": 0.5, "presence_penalty": 2.0, "max_tokens": 512,
                      "instance_max_tokens": 300, "instance_temperature": 0.0, "instance_top_p": 1.0,
                      "instance_presence_penalty": 1.5},
}
SAMPLING_KEYS = tuple(MODE_DEFAULTS["alpaca"])


@dataclass
class GenerateConfig:
    out: str = ""
    seeds: str | None = None  # default: the shipped seeds/seed_tasks.jsonl
    num_instructions: int = 100
    mode: str = "alpaca"  # alpaca | self-instruct
    # teacher: a running OpenAI-compatible server, or (when teacher_url is None) one we start
    teacher_url: str | None = None  # comma-separated for several replicas
    teacher_model: str | None = None
    api_key_env: str | None = None  # name of the variable holding the key; the key is never stored
    model: str | None = None  # model to serve when we start the teacher ourselves
    api: str = "chat"  # chat | completion
    structured: str = "auto"  # auto (JSON schema when the teacher is vLLM) | json | text
    templates: str | None = None
    template: list[str] = field(default_factory=list)  # STAGE=FILE overrides
    concurrency: int = 64
    request_timeout: float = 600.0
    max_requests: int | None = None  # give up after this many requests (default 20 x target + 200)
    fsync: str = "group"  # group: fsync data.jsonl after each group | close: only at the end (see runs.py)
    seed: int = 0
    # alpaca mode
    tasks_per_prompt: int = 8
    examples_per_prompt: int = 3
    # self-instruct mode
    seed_examples: int = 6
    machine_examples: int = 2
    instructions_per_prompt: int = 8
    max_instances: int = 5
    # sampling (None = the mode's default above)
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    max_tokens: int | None = None
    instance_max_tokens: int | None = None
    instance_temperature: float | None = None
    instance_top_p: float | None = None
    # filters
    min_words: int = 4
    max_words: int = 150
    blocklist: list[str] = field(default_factory=lambda: list(DEFAULT_BLOCKLIST))
    novelty_threshold: float = 0.7
    stem: bool = False
    decontaminate: list[str] = field(default_factory=list)  # files whose instructions must not leak in
    # languages other than English
    ascii_start: bool = True  # drop instructions that start with a non-ASCII character (the papers')
    tokenizer: str = "rouge"  # ROUGE-L words: rouge (rouge_score's [a-z0-9] runs) | unicode (any script)
    instance_presence_penalty: float | None = None  # sampling, None = the mode's default
    # responses: every kept instruction answered again in chat form, N samples, best kept
    responses: int = 4  # samples per instruction; 0 = keep the outputs the instruction stage wrote
    response_temperature: float = 0.8
    response_top_p: float = 0.95
    response_max_tokens: int = 384
    turns: str = "1"  # assistant turns per conversation: K or a range A-B (generator/conversation.py)
    followup: str = "auto"  # how the user's follow-ups are written: magpie | template | auto (magpie when possible)
    constraints: float = 0.3  # share of instructions given 1..max_constraints verifiable constraints
    max_constraints: int = 2
    # scoring (generator.scoring.ScoreConfig): checks always run; verifiers, judge, reward on demand
    score: list[str] = field(default_factory=lambda: ["verifiers"])
    min_score: float | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    judge_template: str | None = None
    reward_model: str | None = None
    system_prompt: str | None = None  # magpie: a system turn before the user turn (steers the domain)
    system_prompts: str | None = None  # magpie: a file of system prompts, one per request in turn
    personas: str | None = None  # magpie: a file of personas (who the user is), one per request in turn
    # the teacher's context window (default: what vLLM reports); vLLM arguments when we start it
    max_model_len: int | None = None
    vllm_args: list[str] = field(default_factory=list)

    def score_config(self):
        import dataclasses

        from generator.scoring import ScoreConfig

        return ScoreConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ScoreConfig)})

    def request_budget(self) -> int:
        """--max-requests, or enough for a weak teacher: 20 requests per instruction (40 when each
        instruction is also answered and scored) plus 200."""
        if self.max_requests is not None:
            return self.max_requests
        return (40 if self.responses > 0 else 20) * self.num_instructions + 200

    def sampling(self) -> dict:
        return {k: getattr(self, k) for k in SAMPLING_KEYS}

    def validate(self) -> None:
        from generator.errors import UserError

        if not self.out:
            raise UserError("--out: name the run directory, e.g. --out runs/gen1")
        if self.mode not in MODE_DEFAULTS:
            raise UserError(f"--mode {self.mode!r}: choose alpaca, self-instruct or magpie")
        if self.system_prompts and self.mode != "magpie":
            raise UserError("--system-prompts steer --mode magpie (a system turn before the user's request); in the "
                            "other modes the stage templates hold the system turn -- use --personas to steer them")
        if self.mode == "magpie" and self.responses < 1:
            raise UserError("--mode magpie writes requests only: it needs --responses N >= 1 to answer them")
        if self.api not in ("chat", "completion"):
            raise UserError(f"--api {self.api!r}: choose chat or completion")
        if self.fsync not in ("group", "close"):
            raise UserError(f"--fsync {self.fsync!r}: choose group or close")
        if self.structured not in ("auto", "json", "text"):
            raise UserError(f"--structured {self.structured!r}: choose auto, json or text")
        if self.num_instructions < 1 or self.concurrency < 1:
            raise UserError("--num-instructions and --concurrency must be at least 1")
        if self.tokenizer not in TOKENIZERS:
            raise UserError(f"--tokenizer {self.tokenizer!r}: choose rouge or unicode")
        if not 0.0 < self.novelty_threshold <= 1.0:
            raise UserError("--novelty-threshold must be in (0, 1]")
        if self.responses < 0 or self.responses > 64:
            raise UserError(f"--responses {self.responses}: choose 0 (keep the listed outputs) to 64")
        if not 0.0 <= self.constraints <= 1.0:
            raise UserError(f"--constraints {self.constraints}: a share between 0 and 1")
        if self.constraints > 0 and self.responses == 0:
            raise UserError("--constraints needs --responses N > 0: constrained instructions are answered again")
        from generator.conversation import parse_turns

        if self.followup not in ("auto", "magpie", "template"):
            raise UserError(f"--followup {self.followup!r}: choose auto, magpie or template")
        if parse_turns(self.turns)[1] > 1:
            if self.responses < 1:
                raise UserError("--turns above 1 needs --responses N >= 1: every assistant turn is sampled and scored")
            if self.api != "chat":
                raise UserError("--turns above 1 needs --api chat: a conversation is sent as chat messages")
        if self.max_constraints < 1:
            raise UserError("--max-constraints must be at least 1")
        if self.response_max_tokens < 16:
            raise UserError("--response-max-tokens must be at least 16")
        if self.min_words > self.max_words:
            raise UserError(f"--min-words {self.min_words} is above --max-words {self.max_words}")
        for name in ("tasks_per_prompt", "examples_per_prompt", "instructions_per_prompt", "max_instances"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1")
        if self.max_model_len is not None and self.max_model_len < 64:
            raise UserError("--max-model-len must be at least 64")
        self.score_config().validate()


# How a persona becomes the system turn of a Magpie request: the teacher then writes what this
# person would ask. (Kept beside the config: one line, no stage or parser of its own.)
PERSONA_SYSTEM_PROMPT = ("You are a helpful assistant. The person writing to you is {persona}. "
                         "They ask for help with something from their own work or life.")


def steering(cfg: GenerateConfig) -> list[dict]:
    """Who asks, in turn, one per request: {"system_prompt", "persona"} each. Magpie: a system turn
    before the user's request (a persona becomes PERSONA_SYSTEM_PROMPT). Alpaca / self-instruct:
    the persona goes into the stage's template (`persona`), which asks for tasks such a person
    would bring. One entry of Nones when nothing steers. Files: one per line (blank lines and
    lines starting with # skipped), or JSON lines with a "system_prompt" / "persona" field."""
    from generator.errors import UserError
    from generator.rows import read_text

    def load(path: str, key: str) -> list[str]:
        import json

        out = []
        for no, line in enumerate(read_text(path).splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("{"):
                try:
                    value = json.loads(line).get(key)
                except (ValueError, AttributeError):
                    value = None
                if not isinstance(value, str) or not value.strip():
                    raise UserError(f"{path} line {no}: expected a {key!r} string field (or plain text, one per line)")
                line = value.strip()
            out.append(line)
        if not out:
            raise UserError(f"{path}: no {key.replace('_', ' ')}s in the file (one per line)")
        return out

    if cfg.mode != "magpie":
        return [{"system_prompt": None, "persona": t} for t in load(cfg.personas, "persona")] if cfg.personas \
            else [{"system_prompt": None, "persona": None}]
    steers = [{"system_prompt": cfg.system_prompt, "persona": None}] if cfg.system_prompt else []
    if cfg.system_prompts:
        steers += [{"system_prompt": t, "persona": None} for t in load(cfg.system_prompts, "system_prompt")]
    if cfg.personas:
        steers += [{"system_prompt": PERSONA_SYSTEM_PROMPT.format(persona=t), "persona": t}
                   for t in load(cfg.personas, "persona")]
    return steers or [{"system_prompt": None, "persona": None}]
