"""`TrainConfig`: every setting of `sprout train`, filled by `generator.config.load_config` from
defaults < `--config train.yaml` < flags. `check()` turns impossible values into a UserError that
names the setting, before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from generator.errors import UserError

SCHEDULES = ("cosine", "linear", "constant")
OVERLONG = ("truncate", "drop")
DTYPES = ("auto", "float32", "bfloat16")
METHODS = ("sft", "dpo")
DPO_LOSSES = ("sigmoid", "ipo")
STRATEGIES = ("ddp", "fsdp")


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------------
    data: str | None = None  # run dir, export, JSONL / JSON / parquet file or HF datasets folder
    out: str | None = None  # output folder (adapter/, metrics.jsonl, summary.json, ...)
    eval_data: str | None = None  # a separate eval set; else `eval_fraction` of `data` is held out
    eval_fraction: float = 0.05  # 0 turns eval off; at least one example when > 0 and data >= 2
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    messages_field: str = "messages"
    system_prompt: str | None = None  # added as a system turn when the record has none
    max_length: int = 1024  # tokens per example, prompt + response
    overlong: str = "truncate"  # truncate | drop examples longer than max_length
    # --- method -------------------------------------------------------------------------------
    method: str = "sft"  # sft | dpo (preference pairs: prompt / chosen / rejected)
    beta: float = 0.1  # DPO: scale of the implicit reward; larger keeps closer to the reference
    dpo_loss: str = "sigmoid"  # sigmoid (DPO paper) | ipo
    init_adapter: str | None = None  # LoRA adapter folder to start from (DPO: also the reference)
    # --- model and LoRA -----------------------------------------------------------------------
    model: str | None = None  # HF folder or hub id; None = the embedded SmolLM2-135M-Instruct
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None  # None = every linear layer of attention and MLP
    # QLoRA: the frozen base in 4-bit NF4 (bitsandbytes, CUDA only), LoRA trained on top in bf16;
    # the adapter is a plain PEFT adapter for the bf16 base, and --merge merges into that base
    load_in_4bit: bool = False
    # --- optimisation -------------------------------------------------------------------------
    epochs: int = 3
    max_steps: int | None = None  # optimizer steps; overrides epochs when given
    batch_size: int = 8  # examples per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    schedule: str = "cosine"  # cosine | linear | constant (after warmup)
    max_grad_norm: float = 1.0  # 0 disables clipping
    max_pass_tokens: int | None = None  # padded tokens per forward pass; None = 1024 on CPU, 0 (no limit) on GPU
    gradient_checkpointing: bool = False
    dtype: str = "auto"  # auto = bf16 on GPUs that support it, fp32 elsewhere
    seed: int = 0
    # several processes (torchrun / accelerate launch): ddp = a whole student per process; fsdp = its
    # weights sharded over them (trainer/sharding.py). One process trains unsharded either way.
    strategy: str = "ddp"
    # --- bookkeeping --------------------------------------------------------------------------
    log_every: int = 1
    eval_every: int = 50  # steps between eval losses (and once at the end); 0 = end only
    save_every: int = 100  # steps between resumable checkpoints; 0 = none
    keep_checkpoints: int = 2  # newest checkpoints kept under OUT/checkpoints/
    resume: bool = False  # continue from the newest checkpoint in OUT
    overwrite: bool = False  # allow writing into an OUT that already holds a run
    merge: bool = False  # also write the merged full model to OUT/merged/
    progress: bool = True  # tqdm progress bar on stderr
    # mirrors of metrics.jsonl: tensorboard (when installed) | wandb | mlflow | none (trainer/trackers.py)
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])

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
    choices = {"schedule": SCHEDULES, "overlong": OVERLONG, "dtype": DTYPES, "method": METHODS,
               "dpo_loss": DPO_LOSSES, "strategy": STRATEGIES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise UserError(f"--{name.replace('_', '-')} {getattr(cfg, name)!r}: choose one of {', '.join(allowed)}")
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
