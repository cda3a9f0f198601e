"""`sprout generate`'s settings: one dataclass, filled from defaults < --config YAML < flags."""

from __future__ import annotations

from dataclasses import dataclass

from generator.config import check_choices, same_as, setting

from generator.filters import DEFAULT_BLOCKLIST
from generator.scoring import ScoreConfig
from generator.templates import STAGES

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


_RUN, _TEACHER, _PROMPTS, _SAMPLING = "run", "teacher", "prompts and examples", "sampling"
_FILTERS, _RESPONSES, _STEER = "instruction filters", "responses and conversations", "who asks"


@dataclass
class GenerateConfig:
    # --- the run ----------------------------------------------------------------------------
    out: str = setting("", "run directory (created, or resumed if it exists)", group=_RUN)
    seeds: str | None = setting(None, "seed tasks: Self-Instruct JSONL, Alpaca JSON/JSONL, CSV or parquet",
                                shown="the shipped seeds/seed_tasks.jsonl", group=_RUN)
    num_instructions: int = setting(100, "target number of kept instructions", group=_RUN)
    mode: str = setting("alpaca", "alpaca: one pass; magpie: the teacher writes user requests from its chat "
                        "template alone (seedless); self-instruct: bootstrap, classify, instances",
                        choices=tuple(MODE_DEFAULTS), group=_RUN)
    # --- the teacher: a running OpenAI-compatible server, or (teacher_url None) one we start --
    teacher_url: str | None = setting(None, "OpenAI-compatible base URL(s), comma-separated",
                                      shown="start vLLM here", group=_TEACHER)
    teacher_model: str | None = setting(None, "model name on the teacher", shown="the first one it serves",
                                        group=_TEACHER)
    # the name of the variable, never the key: config.yaml is written to disk
    api_key_env: str | None = setting(None, "environment variable holding the API key", group=_TEACHER,
                                      shown="$OPENAI_API_KEY, sent only to api.openai.com")
    model: str | None = setting(None, "model to serve when no --teacher-url is given", group=_TEACHER,
                                shown="the embedded SmolLM2-135M-Instruct")
    api: str = setting("chat", "chat messages or raw completion prompts", choices=("chat", "completion"),
                       group=_TEACHER)
    structured: str = setting("auto", "JSON-schema guided replies (auto: when the teacher is vLLM) or numbered "
                              "text", choices=("auto", "json", "text"), group=_TEACHER)
    concurrency: int = setting(64, "sequences in flight; a request for n samples counts n", group=_TEACHER)
    request_timeout: float = setting(600.0, "seconds per request", group=_TEACHER)
    max_requests: int | None = setting(None, "give up after this many requests", group=_TEACHER,
                                       shown="20 per target instruction, 40 with --responses, plus 200")
    max_model_len: int | None = setting(None, "the teacher's context length", group=_TEACHER,
                                        shown="what vLLM reports; when Sprout starts the teacher: the model's own")
    vllm_args: list[str] = setting(help="argument for the vLLM server Sprout starts when no --teacher-url is given, "
                                   "e.g. --vllm-arg=--tensor-parallel-size=2 (repeatable)", factory=list,
                                   flag="--vllm-arg", metavar="ARG", group=_TEACHER)
    # --- prompts and examples -------------------------------------------------------------------
    templates: str | None = setting(None, "folder of stage templates replacing ours (see docs/templates.md)",
                                    group=_PROMPTS)
    template: list[str] = setting(help="replace one stage's template (repeatable); stages: " + ", ".join(STAGES),
                                  factory=list, metavar="STAGE=FILE", group=_PROMPTS)
    seed: int = setting(0, "random seed for example sampling", group=_PROMPTS)
    tasks_per_prompt: int = setting(8, "alpaca: tasks asked for per request", group=_PROMPTS)
    examples_per_prompt: int = setting(3, "alpaca: seed tasks shown per request", group=_PROMPTS)
    seed_examples: int = setting(6, "self-instruct: seed instructions shown per request once machine ones exist",
                                 shown="6, the paper's", group=_PROMPTS)
    machine_examples: int = setting(2, "self-instruct: machine instructions shown per request", group=_PROMPTS)
    instructions_per_prompt: int = setting(8, "self-instruct / magpie: instructions asked for per request",
                                           group=_PROMPTS)
    max_instances: int = setting(5, "self-instruct: instances per instruction", group=_PROMPTS)
    # --- sampling: None = the mode's (MODE_DEFAULTS, the papers' settings) ----------------------
    temperature: float | None = setting(None, "temperature of the main request", shown="the mode's", group=_SAMPLING)
    top_p: float | None = setting(None, "top-p of the main request", shown="the mode's", group=_SAMPLING)
    presence_penalty: float | None = setting(None, "presence penalty of the main request", shown="the mode's",
                                             group=_SAMPLING)
    max_tokens: int | None = setting(None, "max tokens of the main request", shown="the mode's", group=_SAMPLING)
    instance_max_tokens: int | None = setting(None, "self-instruct: max tokens of the instance request",
                                              shown="300", group=_SAMPLING)
    instance_temperature: float | None = setting(None, "self-instruct: temperature of the instance request",
                                                 shown="0", group=_SAMPLING)
    instance_top_p: float | None = setting(None, "self-instruct: top-p of the instance request", shown="1",
                                           group=_SAMPLING)
    # --- instruction filters --------------------------------------------------------------------
    min_words: int = setting(4, "drop instructions shorter than this many words", group=_FILTERS)
    max_words: int = setting(150, "drop instructions longer than this many words", group=_FILTERS)
    blocklist: list[str] = setting(help="drop instructions containing this word (repeatable; replaces the papers' "
                                   "list)", factory=lambda: list(DEFAULT_BLOCKLIST), metavar="WORD", group=_FILTERS)
    novelty_threshold: float = setting(0.7, "drop instructions with ROUGE-L F above this against the pool",
                                       group=_FILTERS)
    stem: bool = setting(False, "Porter-stem words before ROUGE-L (rouge-score's option)", group=_FILTERS)
    min_request_logprob: float = setting(
        -3.0, "magpie: drop a written request (or follow-up) whose mean log-prob per token, under the teacher "
        "that wrote it, is below this: word salad from a small teacher (with the embedded 135M teacher, ~50 of 54 "
        "requests below -3 were nonsense, 20 of 22 above -2 were fine); --min-request-logprob=-inf keeps all",
        group=_FILTERS)
    decontaminate: list[str] = setting(help="drop instructions overlapping these files (13-gram or ROUGE-L); "
                                       "repeatable", factory=list, metavar="FILE", group=_FILTERS)
    # --- languages other than English ----------------------------------------------------------
    ascii_start: bool = setting(True, "keep only instructions that start with an ASCII character (the papers' "
                                "rule; --no-ascii-start for other scripts)", group=_FILTERS)
    drop_statements: bool = setting(True, "drop an instruction that states instead of asks (\"Anna is twice as old as "
                                    "Ben.\"): English word lists, self-instruct and alpaca modes (--no-drop-statements "
                                    "for other languages)", group=_FILTERS)
    tokenizer: str = same_as(ScoreConfig, "tokenizer", group=_FILTERS)
    instance_presence_penalty: float | None = setting(None, "self-instruct: presence penalty of the instance "
                                                      "request", shown="1.5, the paper's", group=_SAMPLING)
    # --- responses: every kept instruction answered again in chat form, N samples, best kept ----
    responses: int = setting(4, "answer every kept instruction again in chat form, N samples, and keep the best "
                             "that passes every check (0 keeps the outputs the instruction stage wrote)",
                             group=_RESPONSES)
    response_temperature: float = setting(0.8, "sampling temperature of the responses", group=_RESPONSES)
    response_top_p: float = setting(0.95, "top-p of the responses", group=_RESPONSES)
    response_max_tokens: int = setting(384, "max tokens of one response", group=_RESPONSES)
    turns: str = setting("1", "assistant turns per conversation: K, or a range A-B drawn per conversation; above 1 "
                         "the teacher, playing the user, follows up on each kept answer and every turn is scored "
                         "like the first; records then carry `messages`", group=_RESPONSES)
    followup: str = setting("auto", "how the teacher writes the user's follow-ups: magpie (it continues the chat "
                            "template's user turn after the conversation, as Magpie does for the first request), "
                            "template (it is asked to play the user, prompts/followup.jinja) or auto: magpie when "
                            "Sprout can render the teacher's chat template, else template",
                            choices=("auto", "magpie", "template"), group=_RESPONSES)
    constraints: float = setting(0.3, "share of instructions given verifiable constraints that a response must "
                                 "meet to be kept (see docs/verifiers.md)", group=_RESPONSES)
    max_constraints: int = setting(2, "most constraints added to one instruction", group=_RESPONSES)
    # --- scoring (generator.scoring.ScoreConfig): the same settings as `sprout score` -----------
    score: list[str] = same_as(ScoreConfig, "score")
    min_score: float | None = same_as(ScoreConfig, "min_score")
    judge_url: str | None = same_as(ScoreConfig, "judge_url")
    judge_model: str | None = same_as(ScoreConfig, "judge_model")
    judge_template: str | None = same_as(ScoreConfig, "judge_template")
    reward_model: str | None = same_as(ScoreConfig, "reward_model")
    # --- who asks -----------------------------------------------------------------------------
    system_prompt: str | None = setting(None, "magpie: a system prompt before the user turn, to steer the "
                                        "requests' domain", group=_STEER)
    system_prompts: str | None = setting(None, "magpie: system prompts (one per line, or JSONL with "
                                         "\"system_prompt\"), one per request in turn; each record keeps the one "
                                         "it came from", metavar="FILE", group=_STEER)
    personas: str | None = setting(None, "personas, who the user is (one per line, or JSONL with \"persona\"), "
                                   "one per request in turn -- magpie: a system turn; alpaca / self-instruct: the "
                                   "stage template asks for tasks such a person would bring; each record keeps its "
                                   "persona", metavar="FILE", group=_STEER)
    fsync: str = setting("group", "group: fsync data.jsonl after each instruction group, power-loss safe; close: "
                         "only when the run ends", choices=("group", "close"), group=_RUN)

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
        check_choices(self)  # mode, api, structured, fsync, tokenizer, followup: from their fields
        if self.system_prompts and self.mode != "magpie":
            raise UserError("--system-prompts steer --mode magpie (a system turn before the user's request); in the "
                            "other modes the stage templates hold the system turn -- use --personas to steer them")
        if self.mode == "magpie" and self.responses < 1:
            raise UserError("--mode magpie writes requests only: it needs --responses N >= 1 to answer them")
        if self.num_instructions < 1 or self.concurrency < 1:
            raise UserError("--num-instructions and --concurrency must be at least 1")
        if not 0.0 < self.novelty_threshold <= 1.0:
            raise UserError("--novelty-threshold must be in (0, 1]")
        if self.responses < 0 or self.responses > 64:
            raise UserError(f"--responses {self.responses}: choose 0 (keep the listed outputs) to 64")
        if not 0.0 <= self.constraints <= 1.0:
            raise UserError(f"--constraints {self.constraints}: a share between 0 and 1")
        if self.constraints > 0 and self.responses == 0:
            raise UserError("--constraints needs --responses N > 0: constrained instructions are answered again")
        from generator.conversation import parse_turns

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
