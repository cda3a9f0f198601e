"""`sprout train`: LoRA-tune a student model on an instruction dataset.

    sprout train --data runs/gen1 --out runs/train1 [--model M] [--max-steps N] [--config train.yaml]

One training routine, top to bottom in `_train()`: `_setup_*` helpers read and validate the data,
load the student and wrap it with LoRA (peft), tokenize with the loss on responses + end-of-turn
tokens only (trainer/format.py) and build AdamW with warmup and a cosine / linear / constant
schedule; then the loop, one `_step` per optimizer step over length-grouped batches
(trainer/batching.py) with gradient clipping and gradient accumulation whose loss is normalised by
the supervised tokens of the whole accumulated batch (trainer/stepping.py). Eval loss every
--eval-every steps, resumable checkpoints every --save-every steps (--resume continues exactly;
trainer/resume.py checks it is the same run), a NaN / inf loss stops the run with a message; the
finished run's files are written by trainer/outputs.py.

--method dpo trains on preference pairs (prompt / chosen / rejected) with the same loop: the
pieces that differ (pair encoding, reference log-probs, the DPO loss and its metrics) are in
trainer/dpo.py. --init-adapter starts from an existing adapter (e.g. the SFT run's OUT/adapter).

Writes OUT/adapter/ (PEFT adapter + tokenizer, loadable by `PeftModel.from_pretrained` and vLLM's
--lora-modules), OUT/train_config.yaml, OUT/metrics.jsonl, OUT/loss.png, OUT/summary.json,
OUT/checkpoints/, OUT/tensorboard/ (when tensorboard is installed; --report-to adds OUT/wandb/ or
OUT/mlruns/, see trainer/trackers.py) and, with --merge, OUT/merged/. --load-in-4bit (QLoRA, CUDA)
holds the frozen base in 4-bit NF4; the adapter is still a plain one for the bf16 base.

Several GPUs or machines: launch the same command with `torchrun` or `accelerate launch` (see
trainer/dist.py); each process takes its share of every step's micro-batches (DDP), rank 0 writes.
--strategy fsdp shards the student's weights over the processes instead (trainer/sharding.py).
--batch-size is per process, so the effective batch is batch-size x grad-accum x processes.

Memory: each micro-batch is cut into forward passes of at most --max-pass-tokens padded tokens
(1024 on CPU by default); the loss is normalised per optimizer step, so the gradients do not
change, only the activation memory does. --gradient-checkpointing trades ~30% speed for more.

Speed on a GPU: SFT micro-batches go padding-free there (trainer/packing.py: the examples end to end
in one row, flash varlen attention per example, the same gradients), which doubled a 1.7B student's
step on an H200; --packing also fills micro-batches by tokens, as TRL's packing does.

On CPU training runs in fp32 (bf16 autocast there is 10-40x slower). Two environment settings
help on CPU and are left to the user (they are process-wide, read when torch loads):
  * glibc's allocator returns and re-maps the large activation buffers on every step; keeping
    them mapped saves the page faults:
        MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 sprout train ...
  * on a machine shared with other busy processes, OpenMP threads that spin while waiting for a
    descheduled sibling waste most of the CPU: OMP_WAIT_POLICY=PASSIVE measured 2.8x faster with
    one competing process on 2 cores (and ~15% slower on an idle machine).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from generator.errors import UserError
from trainer.config import TrainConfig, check
from trainer.stepping import accumulate, held_out_loss, lr_factor


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class Hooks:
    """Small seams for tests and embedding callers; the loop works the same without them."""

    on_model: Callable | None = None  # (peft model) before the first step: inspect, add forward hooks
    on_step: Callable | None = None  # (step, record) after each optimizer step: may raise to stop
    on_data: Callable | None = None  # (train items, eval items) encoded; DPO pairs carry their reference log-probs


def train(cfg: TrainConfig, hooks: Hooks | None = None) -> dict:
    """Run one training job; returns the summary (also written to OUT/summary.json by rank 0)."""
    from trainer import dist

    from generator.runs import RunLock

    cfg, hooks = check(cfg), hooks or Hooks()
    info = dist.setup()
    out, lock, busy = Path(cfg.out).expanduser(), None, None
    try:
        if info.main:  # one writer per output folder, held until training ends (or the process dies)
            try:
                lock = RunLock(out, "training output folder")
            except UserError as e:
                busy = e
        if dist.any_rank(info, busy is not None):  # every rank stops, not only rank 0
            raise busy or UserError(f"{out}: in use by another Sprout process")
        return _train(cfg, hooks, out, info)
    finally:
        if lock:
            lock.release()
        dist.teardown(info)


@dataclass
class Job:
    """One training run's state: built by the `_setup_*` helpers in order, advanced by the loop
    (`_step`, `_after_step`), and written out by trainer/outputs.py's `write_outputs`."""

    cfg: TrainConfig
    out: Path
    info: Any  # trainer.dist.DistInfo
    say: Callable[[str], None]
    train_ex: list = field(default_factory=list)  # examples (SFT) or pairs (DPO) as read
    eval_ex: list = field(default_factory=list)
    model: Any = None  # the peft model
    tok: Any = None
    formatter: Any = None
    dtype: Any = None
    train_enc: list = field(default_factory=list)  # encoded: token ids + loss mask (+ DPO reference log-probs)
    eval_enc: list = field(default_factory=list)
    stats: Any = None  # trainer.format encode stats (truncated / dropped) of train and eval
    eval_stats: Any = None
    lengths: list = field(default_factory=list)  # what batches are grouped and split by
    flat: bool = False  # padding-free micro-batches (trainer/packing.py)
    collate: Callable | None = None  # a micro-batch's examples -> tensors
    split: Callable | None = None  # a micro-batch -> forward passes of at most pass_tokens
    plan: Any = None  # trainer.batching.StepPlan
    pass_tokens: int = 0
    total: int = 0  # optimizer steps
    loss_fn: Any = None  # CausalLMLoss, or DPOLoss around it
    step_fn: Any = None  # loss_fn, or its DDP wrapper
    sharded: bool = False
    params: list = field(default_factory=list)
    optimizer: Any = None
    scheduler: Any = None
    start: int = 0  # steps already done (resume)
    train_time: float = 0.0
    tokens_all: int = 0
    tokens_sup: int = 0  # DPO: pairs
    eval_loss: float | None = None

    @property
    def is_dpo(self) -> bool:
        return self.cfg.method == "dpo"


def _train(cfg: TrainConfig, hooks: Hooks, out: Path, info) -> dict:
    from tqdm import tqdm

    from generator.config import save_config, to_dict
    from trainer.metrics import MetricsLog
    from trainer.outputs import write_outputs
    from trainer.resume import prepare_out

    def say(msg: str) -> None:
        if info.main:
            print(msg, file=sys.stderr, flush=True)

    job = Job(cfg, out, info, say)
    prepare_out(cfg, out, info)
    _setup_data(job)  # data first: a bad file fails in a second, before the model loads
    _setup_student(job)
    _setup_encoding(job)
    _setup_optimizer(job)
    if job.is_dpo:
        _setup_reference(job)
    if hooks.on_data:
        hooks.on_data(job.train_enc, job.eval_enc)
    _setup_resume(job)
    _announce(job)
    metrics = None
    if info.main:
        save_config(cfg, out / "train_config.yaml")
        metrics = MetricsLog(out, resume_step=job.start if cfg.resume else None, report_to=cfg.report_to,
                             config=to_dict(cfg))
    if hooks.on_model:
        hooks.on_model(job.model)

    job.model.train()  # from_pretrained returns eval mode, which would silently switch LoRA dropout off
    bar = tqdm(total=job.total, initial=job.start, disable=not (info.main and cfg.progress), desc="train",
               unit="step", dynamic_ncols=True, file=sys.stderr)
    try:
        for step in range(job.start, job.total):
            record = _step(job, step)
            if metrics and ((step + 1) % cfg.log_every == 0 or step + 1 == job.total):
                metrics.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{job.tokens_all / job.train_time:.0f}",
                            refresh=False)
            _after_step(job, step + 1, metrics)
            if hooks.on_step:
                hooks.on_step(step + 1, record)
        bar.close()
        if job.eval_enc:
            _evaluate(job, job.total, metrics)
        return write_outputs(job)
    finally:
        bar.close()
        if metrics:  # an exception on its way out marks the trackers' runs failed
            metrics.close(failed=sys.exc_info()[1] is not None)


# --- setup, in the order _train calls it ------------------------------------------------------
def _setup_data(job: Job) -> None:
    """Read the training (and eval) examples or pairs, and check a resumed run is the same run."""
    from generator.models import resolve_model
    from trainer.data import Fields, load_examples, load_pairs, split_eval
    from trainer.resume import check_or_record_fingerprint, run_fingerprint

    cfg = job.cfg
    fields = Fields(cfg.instruction_field, cfg.input_field, cfg.output_field, cfg.messages_field)
    load = load_pairs if job.is_dpo else (lambda path: load_examples(path, fields))
    examples = load(cfg.data)
    if cfg.eval_data:
        job.train_ex, job.eval_ex = examples, load(cfg.eval_data)
    else:
        job.train_ex, job.eval_ex = split_eval(examples, cfg.eval_fraction, cfg.seed)
    check_or_record_fingerprint(cfg, job.out, job.info,
                                run_fingerprint(cfg, resolve_model(cfg.model), job.train_ex, job.eval_ex))


def _setup_student(job: Job) -> None:
    """The student with its LoRA adapter; the same LoRA initialisation on every rank."""
    import random

    import numpy as np
    import torch

    from generator.models import resolve_model
    from trainer import packing, sharding
    from trainer.format import Formatter
    from trainer.model import load_student, pick_dtype

    cfg, info = job.cfg, job.info
    job.dtype = pick_dtype(cfg.dtype, info.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical LoRA init on every rank
    job.model, job.tok, stop_ids = load_student(
        resolve_model(cfg.model), sharding.load_device(cfg.strategy, info), job.dtype, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
        gradient_checkpointing=cfg.gradient_checkpointing, init_adapter=cfg.init_adapter,
        load_in_4bit=cfg.load_in_4bit)
    torch.manual_seed(cfg.seed + info.rank)  # dropout masks differ per rank, as they would on one big batch
    job.formatter = Formatter(job.tok, cfg.system_prompt, stop_ids)
    free = cfg.padding_free if cfg.padding_free is not None else packing.available(info.device, job.dtype)
    job.flat = not job.is_dpo and (cfg.packing or free)
    why = packing.enable(job.model, cfg.max_length) if job.flat else None
    if why and (cfg.packing or cfg.padding_free):
        raise UserError(f"--{'packing' if cfg.packing else 'padding-free'}: {resolve_model(cfg.model)}: {why}; "
                        "train without the flag (padded batches)")
    job.flat = job.flat and not why  # auto: padded batches for such a model


def _setup_encoding(job: Job) -> None:
    """Token ids and loss masks, and the batch plan over them."""
    from trainer import dpo, packing
    from trainer.batching import StepPlan, collate, split_by_tokens, split_flat
    from trainer.format import encode_all

    cfg = job.cfg
    encode = dpo.encode_pairs if job.is_dpo else encode_all
    job.train_enc, job.stats = encode(job.formatter, job.train_ex, cfg.max_length, cfg.overlong)
    job.eval_enc, job.eval_stats = encode(job.formatter, job.eval_ex, cfg.max_length, cfg.overlong)
    if not job.train_enc:
        raise UserError(f"{cfg.data}: all {job.stats.total} training examples are longer than --max-length "
                        f"{cfg.max_length} tokens; raise --max-length or use --overlong truncate")
    # A DPO pair costs two padded rows of its longer side; batches group pairs by that.
    job.lengths = [e.batch_length if job.is_dpo else e.n_tokens for e in job.train_enc]
    job.collate = dpo.collate_pairs if job.is_dpo else packing.collate if job.flat else collate
    job.split = split_flat if job.flat else split_by_tokens
    job.plan = StepPlan(job.lengths, cfg.batch_size, cfg.grad_accum, job.info.world, cfg.seed, cfg.group_by_length,
                        pack_tokens=cfg.batch_size * cfg.max_length if cfg.packing else 0)
    # Activation memory grows with the tokens of one forward pass (~4 MB a token for SmolLM2-135M in
    # fp32), while CPU throughput per token is flat from ~400 tokens a pass up: on CPU passes are
    # capped at 1024 tokens by default (half the peak memory of 2048, same speed).
    cpu = job.info.device.type == "cpu"
    job.pass_tokens = cfg.max_pass_tokens if cfg.max_pass_tokens is not None else (1024 if cpu else 0)
    job.total = cfg.max_steps or cfg.epochs * job.plan.steps_per_epoch


def _setup_optimizer(job: Job) -> None:
    """The loss, sharded or not, then AdamW and the schedule over the trainable parameters."""
    import torch

    from trainer import sharding
    from trainer.model import CausalLMLoss

    cfg, info = job.cfg, job.info
    autocast = torch.bfloat16 if job.dtype == torch.bfloat16 and info.device.type == "cuda" else None
    job.loss_fn = CausalLMLoss(job.model, autocast_dtype=autocast)
    job.sharded = sharding.active(cfg.strategy, info)
    if job.sharded:  # before the optimizer is built: sharding replaces the parameters
        sharding.shard(job.loss_fn, info)
    elif cfg.strategy == "fsdp":
        job.say("--strategy fsdp with one process: nothing to shard, training unsharded")
    job.params = [p for p in job.model.parameters() if p.requires_grad]
    job.optimizer = torch.optim.AdamW(job.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    job.scheduler = torch.optim.lr_scheduler.LambdaLR(
        job.optimizer, lr_factor(cfg.schedule, round(cfg.warmup_ratio * job.total), job.total))


def _setup_reference(job: Job) -> None:
    """DPO's reference: the model as it starts (adapter off from a base model; the loaded SFT adapter
    with --init-adapter), computed once, before a resumed run loads its checkpoint."""
    from trainer import dpo

    cfg = job.cfg
    job.say(f"dpo: reference log-probs of {len(job.train_enc) + len(job.eval_enc)} pairs "
            f"({'the loaded adapter' if cfg.init_adapter else 'adapter off'})")
    for part in (job.train_enc, job.eval_enc):
        dpo.compute_reference(job.loss_fn, part, cfg.batch_size, job.tok.pad_token_id, job.info.device,
                              adapter_off=not cfg.init_adapter, pass_tokens=job.pass_tokens)
    job.loss_fn = dpo.DPOLoss(job.loss_fn, cfg.beta, cfg.dpo_loss)


def _setup_resume(job: Job) -> None:
    """Wrap the loss for DDP where several unsharded processes train; load the newest good checkpoint
    when resuming."""
    import torch

    from trainer import checkpoint

    info = job.info
    job.step_fn = job.loss_fn
    if info.active and not job.sharded:
        job.step_fn = torch.nn.parallel.DistributedDataParallel(
            job.loss_fn, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    if job.cfg.resume:
        ckpt, state = checkpoint.load_newest_good(job.out, info, job.model, job.optimizer, job.scheduler,
                                                  job.sharded)
        job.start = state["step"]
        job.say(f"resuming from {ckpt} (step {job.start})")


def _announce(job: Job) -> None:
    cfg, info, lora = job.cfg, job.info, job.model.peft_config["default"]
    unit = "pairs" if job.is_dpo else "examples"
    n_trainable = sum(p.numel() for p in job.params)
    per_step = cfg.grad_accum * info.world * cfg.batch_size
    per_step = f"up to {per_step * cfg.max_length} tokens" if cfg.packing else f"{per_step} {unit}"
    job.say(f"train: {len(job.train_enc)} {unit} ({job.stats.truncated} truncated, {job.stats.dropped} dropped), "
            f"eval: {len(job.eval_enc)}; {job.total} steps x {per_step}; "
            f"LoRA r={lora.r} on {','.join(sorted(lora.target_modules))} ({n_trainable / 1e6:.2f}M trainable); "
            f"{info.device.type} {str(job.dtype).replace('torch.', '')}"
            + ("; packed" if cfg.packing else "; padding-free" if job.flat else "")
            + (f"; {info.world} processes" + (" (FSDP)" if job.sharded else "") if info.active else ""))


# --- the loop ---------------------------------------------------------------------------------
def _step(job: Job, step: int) -> dict:
    """One optimizer step (0-based `step`) over all ranks; returns its metrics record."""
    import torch

    from trainer import dist, sharding
    from trainer.metrics import peak_memory_mb
    from trainer.packing import to_device

    cfg, info, enc = job.cfg, job.info, job.train_enc
    t0 = time.perf_counter()
    per_rank = job.plan.step(step)
    group = [i for micro in per_rank for mb in micro for i in mb]
    n_sup = sum(enc[i].n_supervised for i in group)  # the whole step, all ranks
    n_tok = sum(enc[i].n_tokens for i in group)
    pad_id = job.tok.pad_token_id
    mine = [to_device(job.collate([enc[i] for i in part], pad_id), info.device)
            for mb in per_rank[info.rank] for part in job.split(mb, job.lengths, job.pass_tokens)]
    lr = job.scheduler.get_last_lr()[0]

    if job.sharded:  # every rank makes as many passes as the busiest, the idle ones first
        idle = sharding.missing_passes(per_rank, job.lengths, job.pass_tokens, info.rank, job.split)
        sharding.idle_passes(job.step_fn, mine[0], idle, info, backward=True)
    loss = dist.sum_all(info, accumulate(job.step_fn, mine, n_sup, info))[0] / n_sup
    norm = torch.nn.utils.clip_grad_norm_(job.params, cfg.max_grad_norm or float("inf")).item()
    if not (math.isfinite(loss) and math.isfinite(norm)):
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
        raise TrainingDiverged(
            f"training stopped at step {step + 1}: {what} (lr {lr:.3g}); the adapter was not saved. "
            "Lower --lr, raise --warmup-ratio, check the data, or use --dtype float32"
            + ("; resume from the last good checkpoint with --resume" if cfg.save_every else ""))
    job.optimizer.step()
    job.scheduler.step()
    job.optimizer.zero_grad(set_to_none=True)

    dt = time.perf_counter() - t0
    job.train_time, job.tokens_all, job.tokens_sup = job.train_time + dt, job.tokens_all + n_tok, job.tokens_sup + n_sup
    record = {"step": step + 1, "epoch": round((step + 1) / job.plan.steps_per_epoch, 4), "loss": loss,
              "lr": lr, "grad_norm": norm, "step_seconds": dt, "tokens_per_s": n_tok / dt,
              "supervised_tokens_per_s": n_sup / dt,
              "peak_memory_mb": round(peak_memory_mb(info.device), 1)}
    if job.is_dpo:  # its unit is a pair, not a supervised token
        del record["supervised_tokens_per_s"]
        record |= {"pairs_per_s": len(group) / dt, **job.loss_fn.take_metrics(info)}
    return record


def _after_step(job: Job, done: int, metrics) -> None:
    """Held-out loss every --eval-every steps and a checkpoint every --save-every (not after the
    last step: the run ends with its own eval and write_outputs)."""
    from trainer import checkpoint

    cfg = job.cfg
    if done >= job.total:
        return
    if job.eval_enc and cfg.eval_every and done % cfg.eval_every == 0:
        _evaluate(job, done, metrics)
    if cfg.save_every and done % cfg.save_every == 0:
        checkpoint.save(job.out, job.info, done, job.plan.epoch_of(done), done % job.plan.steps_per_epoch,
                        job.model, job.optimizer, job.scheduler, cfg.keep_checkpoints, job.sharded)


def _evaluate(job: Job, done: int, metrics) -> None:
    """Held-out loss (and DPO's reward accuracy / margin), computed on every rank: they sum over ranks."""
    job.eval_loss = held_out_loss(job.loss_fn, job.eval_enc, job.cfg.batch_size, job.tok.pad_token_id,
                                  job.info, None if job.flat else job.collate)  # eval batches stay padded
    extra = job.loss_fn.take_metrics(job.info, prefix="eval_") if job.is_dpo else {}
    if metrics:
        metrics.log({"step": done, "eval_loss": job.eval_loss, **extra})


# --- CLI ----------------------------------------------------------------------------------------
def add_train_args(p: argparse.ArgumentParser) -> None:
    """Flags of `sprout train`, one per TrainConfig field; all default to None so --config and
    TrainConfig's defaults apply."""
    from generator.config import add_flags

    add_flags(p, TrainConfig)
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from generator.config import load_config

    cfg = load_config(TrainConfig, getattr(args, "config", None), vars(args))
    train(cfg)
    return 0
