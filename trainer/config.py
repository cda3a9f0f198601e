"""`TrainConfig`: every setting of `sprout train`, filled by `generator.config.load_config` from
defaults < `--config train.yaml` < flags. `check()` turns impossible values into a UserError that
names the setting, before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from generator.config import check_choices, setting
from generator.errors import UserError

SCHEDULES = ("cosine", "linear", "constant")
OVERLONG = ("truncate", "drop")
DTYPES = ("auto", "float32", "bfloat16")
METHODS = ("sft", "dpo")
DPO_LOSSES = ("sigmoid", "ipo")
STRATEGIES = ("ddp", "fsdp")
# the argument groups of `sprout train --help`
DATA, METHOD, MODEL = "data", "method", "model and LoRA"
OPTIMISATION, LOGGING = "optimisation", "logging and checkpoints"


@dataclass
class TrainConfig:
    # Each field carries its flag (generator.config.setting): `add_flags` builds `sprout train`'s
    # flags from them, with the default in --help taken from here.
    # --- data -------------------------------------------------------------------------------
    data: str | None = setting(None, "run directory, JSONL / JSON / parquet file or HF datasets folder",
                               metavar="PATH", group=DATA)
    out: str | None = setting(None, "output folder (adapter/, metrics.jsonl, summary.json, ...)", metavar="DIR",
                              group=DATA)
    eval_data: str | None = setting(None, "separate eval set", metavar="PATH", group=DATA,
                                    shown="hold out --eval-fraction")
    # at least one example is held out when > 0 and the data has two or more
    eval_fraction: float = setting(0.05, "share of --data held out for eval, 0 = no eval", group=DATA)
    instruction_field: str = setting("instruction", "column holding the instruction", metavar="COLUMN", group=DATA)
    input_field: str = setting("input", "column holding the input", metavar="COLUMN", group=DATA)
    output_field: str = setting("output", "column holding the output", metavar="COLUMN", group=DATA)
    messages_field: str = setting("messages", "column holding the messages", metavar="COLUMN", group=DATA)
    system_prompt: str | None = setting(None, "system turn added to conversations that have none", group=DATA)
    max_length: int = setting(1024, "tokens per example, prompt + response", group=DATA)
    overlong: str = setting("truncate", "examples longer than --max-length: truncate or drop", choices=OVERLONG,
                            group=DATA)
    # --- method -------------------------------------------------------------------------------
    method: str = setting("sft", "sft: learn the responses; dpo: learn from preference pairs (prompt / chosen / "
                          "rejected, e.g. sprout export RUN --format preference)", choices=METHODS, group=METHOD)
    # DPO's beta scales the implicit reward: a larger one keeps the policy closer to the reference
    beta: float = setting(0.1, "DPO: strength of the pull towards the reference", group=METHOD)
    dpo_loss: str = setting("sigmoid", "DPO loss: sigmoid (the paper) or ipo", choices=DPO_LOSSES, group=METHOD)
    init_adapter: str | None = setting(None, "start from this LoRA adapter (e.g. an SFT run's OUT/adapter); with "
                                       "--method dpo it is also the reference policy", metavar="DIR", group=METHOD)
    # --- model and LoRA -----------------------------------------------------------------------
    model: str | None = setting(None, "HF model folder or hub id", shown="the embedded SmolLM2-135M-Instruct",
                                group=MODEL)
    lora_r: int = setting(16, "LoRA rank", group=MODEL)
    lora_alpha: int = setting(32, "LoRA alpha", group=MODEL)
    lora_dropout: float = setting(0.05, "LoRA dropout", group=MODEL)
    target_modules: list[str] | None = setting(None, "module names to adapt", metavar="A,B,...", repeat="csv",
                                               shown="every linear layer of attention and MLP", group=MODEL)
    # QLoRA: the frozen base in 4-bit, LoRA trained on top of it in bf16
    load_in_4bit: bool = setting(False, "QLoRA: hold the frozen base in 4-bit NF4 (bitsandbytes, CUDA GPUs only); "
                                 "the adapter is a plain one for the bf16 base, and --merge merges into that base",
                                 group=MODEL)
    merge: bool = setting(False, "also write the merged model to OUT/merged/", group=MODEL)
    # --- optimisation -------------------------------------------------------------------------
    epochs: int = setting(3, "passes over the data", group=OPTIMISATION)
    max_steps: int | None = setting(None, "optimizer steps (overrides --epochs)", group=OPTIMISATION)
    batch_size: int = setting(8, "examples per micro-batch and process", group=OPTIMISATION)
    grad_accum: int = setting(1, "micro-batches per optimizer step", group=OPTIMISATION)
    lr: float = setting(2e-4, "peak learning rate", group=OPTIMISATION)
    weight_decay: float = setting(0.0, "AdamW weight decay", group=OPTIMISATION)
    warmup_ratio: float = setting(0.03, "share of steps warming up", group=OPTIMISATION)
    schedule: str = setting("cosine", "lr after warmup", choices=SCHEDULES, group=OPTIMISATION)
    max_grad_norm: float = setting(1.0, "gradient clipping, 0 = off", group=OPTIMISATION)
    # None: train() picks by device (1024 on CPU, no split on GPU)
    max_pass_tokens: int | None = setting(None, "split micro-batches into forward passes of at most N padded "
                                          "tokens: less activation memory, same gradients; 0 = never split",
                                          metavar="N", shown="1024 on CPU, 0 on GPU", group=OPTIMISATION)
    # None: on where a fused kernel runs it (trainer/packing.py), a pure speed setting: same gradients
    padding_free: bool | None = setting(None, "SFT: lay each micro-batch's examples end to end in one row, each "
                                        "attending only to itself (flash varlen attention on CUDA): no padding, "
                                        "same gradients", shown="on for bf16 / fp16 runs on CUDA GPUs with flash attention (Ampere "
                                        "or newer), for models with plain causal attention",
                                        group=OPTIMISATION)
    packing: bool = setting(False, "SFT: fill each micro-batch with up to --batch-size x --max-length tokens of "
                            "examples (as TRL's packing fills its rows) instead of --batch-size examples; "
                            "implies --padding-free", group=OPTIMISATION)
    gradient_checkpointing: bool = setting(False, "recompute activations in backward: less memory, ~30% slower",
                                           group=OPTIMISATION)
    dtype: str = setting("auto", "auto: bf16 on GPUs that support it, else fp32", choices=DTYPES, group=OPTIMISATION)
    seed: int = setting(0, "seed for LoRA init, batch order and dropout", group=OPTIMISATION)
    # Grouping cuts padding (the main waste on instruction data), but on a small set it makes each
    # batch all-short or all-long; one DPO epoch of 12 steps ended 25% higher in loss that way than
    # with random batches (benchmarks/RESULTS.md). transformers' TrainingArguments has the same name.
    group_by_length: bool = setting(True, "batch examples of similar length together: less padding, faster; "
                                    "--no-group-by-length draws plain random batches", group=OPTIMISATION)
    # One process trains unsharded either way; fsdp is trainer/sharding.py. No argparse choices:
    # check() names the choices in one line, as it does for a YAML value.
    strategy: str = setting("ddp", "under torchrun / accelerate launch: ddp keeps a whole student per process; "
                            "fsdp shards its weights over the processes, for a student too big for one device",
                            metavar="ddp|fsdp", group=OPTIMISATION)
    # --- logging and checkpoints --------------------------------------------------------------
    log_every: int = setting(1, "steps between metrics lines", group=LOGGING)
    eval_every: int = setting(50, "steps between eval losses (and once at the end), 0 = end only", group=LOGGING)
    save_every: int = setting(100, "steps between resumable checkpoints, 0 = none", group=LOGGING)
    keep_checkpoints: int = setting(2, "newest checkpoints kept under OUT/checkpoints/", group=LOGGING)
    resume: bool = setting(False, "continue from OUT's newest checkpoint", group=LOGGING)
    overwrite: bool = setting(False, "replace a run already in OUT", group=LOGGING)
    progress: bool = setting(True, "progress bar on stderr", group=LOGGING)
    # the trackers live in trainer/trackers.py; check() rejects unknown names and missing packages
    report_to: list[str] = setting(help="trackers mirroring metrics.jsonl: tensorboard (when installed), wandb "
                                   "(offline without an API key), mlflow, or none", factory=lambda: ["tensorboard"],
                                   metavar="NAME,...", repeat="csv", group=LOGGING)

    # --config YAML may use the names of transformers' TrainingArguments and TRL's configs for the
    # same settings (a user's existing YAML reads as is); flags keep Sprout's names.
    YAML_ALIASES: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "schedule", "output_dir": "out",
        "model_name_or_path": "model", "dataset_name": "data", "lora_target_modules": "target_modules",
        "max_seq_length": "max_length", "eval_steps": "eval_every", "save_steps": "save_every",
        "logging_steps": "log_every", "save_total_limit": "keep_checkpoints",
    }


def check(cfg: TrainConfig) -> TrainConfig:
    """Reject values no run can use; the message names the flag."""
    if not cfg.data:
        raise UserError("--data is required: a run directory, JSONL / JSON / parquet file or HF datasets folder")
    if not cfg.out:
        raise UserError("--out is required: the folder to write the adapter and metrics to")
    check_choices(cfg)  # schedule, overlong, dtype, method, dpo_loss: from their fields
    if cfg.strategy not in STRATEGIES:  # no argparse choices (see the field): named here
        raise UserError(f"--strategy {cfg.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    positive = ["max_length", "lora_r", "batch_size", "grad_accum", "log_every"]
    for name in positive:
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_steps is None and cfg.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.max_steps is not None and cfg.max_steps < 1:
        raise UserError(f"--max-steps must be at least 1, got {cfg.max_steps}")
    if cfg.max_pass_tokens is not None and cfg.max_pass_tokens < 0:
        raise UserError(f"--max-pass-tokens must not be negative, got {cfg.max_pass_tokens}")
    non_negative = ["eval_every", "save_every", "keep_checkpoints", "weight_decay", "max_grad_norm", "lora_dropout"]
    for name in non_negative:
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(cfg, name)}")
    if not 0 <= cfg.eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1), got {cfg.eval_fraction}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise UserError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if cfg.lr <= 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}")
    if cfg.beta <= 0:
        raise UserError(f"--beta must be positive, got {cfg.beta}")
    if cfg.init_adapter:
        from pathlib import Path

        if not (Path(cfg.init_adapter).expanduser() / "adapter_config.json").is_file():
            raise UserError(f"--init-adapter {cfg.init_adapter}: not a PEFT adapter folder (no adapter_config.json)")
    if cfg.packing and cfg.padding_free is False:
        raise UserError("--packing lays the examples end to end, which is padding-free: drop --no-padding-free")
    if cfg.method == "dpo" and (cfg.packing or cfg.padding_free):
        raise UserError("--packing / --padding-free are for SFT; DPO batches its pairs padded (drop the flag)")
    from trainer import trackers

    trackers.require(cfg.report_to)  # unknown names and missing packages, before the model loads
    if cfg.load_in_4bit and cfg.strategy == "fsdp":  # FSDP cannot shard bitsandbytes' packed 4-bit weights
        raise UserError("--load-in-4bit cannot be sharded (--strategy fsdp): a 4-bit base is a quarter of the "
                        "bf16 size, so try it with the default --strategy ddp, or shard the bf16 base without 4-bit")
    if cfg.load_in_4bit:
        import torch

        if not torch.cuda.is_available():
            raise UserError("--load-in-4bit needs a CUDA GPU (bitsandbytes NF4); drop it on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise UserError(f"--load-in-4bit needs the bitsandbytes package ({e}); pip install bitsandbytes") from None
    return cfg
