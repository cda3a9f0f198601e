"""`sprout train`: LoRA-tune a student model on an instruction dataset.

    sprout train --data runs/gen1 --out runs/train1 [--model M] [--max-steps N] [--config train.yaml]

One training routine, top to bottom in `train()`: read and validate the data, load the student
and wrap it with LoRA (peft), tokenize with the loss on responses + end-of-turn tokens only
(trainer/format.py), then AdamW over length-grouped batches (trainer/batching.py) with warmup and
a cosine / linear / constant schedule, gradient clipping and gradient accumulation whose loss is
normalised by the supervised tokens of the whole accumulated batch. Eval loss every
--eval-every steps, resumable checkpoints every --save-every steps (--resume continues exactly),
a NaN / inf loss stops the run with a message.

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
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from generator.errors import UserError
from trainer.config import TrainConfig, check

OUTPUTS = ("adapter", "merged", "checkpoints", "tensorboard", "wandb", "mlruns", "trackers.json",
           "metrics.jsonl", "summary.json", "loss.png",
           "train_config.yaml", "run_fingerprint.json")


class TrainingDiverged(UserError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclass
class Hooks:
    """Small seams for tests and embedding callers; the loop works the same without them."""

    on_model: Callable | None = None  # (peft model) before the first step: inspect, add forward hooks
    on_step: Callable | None = None  # (step, record) after each optimizer step: may raise to stop
    on_data: Callable | None = None  # (train items, eval items) encoded; DPO pairs carry their reference log-probs


def lr_factor(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
    """Multiplier of the peak lr for optimizer step `s` (0-based). Warmup starts above 0 so the
    first step already learns (with tiny runs a zero-lr step would be wasted)."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / (warmup + 1)
        progress = (s - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "linear":
            return 1.0 - progress
        return 1.0

    return factor


def accumulate(step_fn, micro_batches: list[dict], n_supervised: int, info=None) -> float:
    """Forward + backward over this rank's micro-batches of one optimizer step.

    Each micro-batch's summed token loss is divided by `n_supervised`, the supervised tokens of the
    *whole* step (all micro-batches, all ranks): the gradients then equal those of one big batch,
    whatever the split. DDP averages gradients over ranks, so the loss is scaled by the world size
    to turn that average back into the sum. Returns this rank's summed (not averaged) token loss."""
    from trainer import sharding

    world = info.world if info is not None else 1
    total = 0.0
    for i, batch in enumerate(micro_batches):
        last = i == len(micro_batches) - 1
        sync = sharding.no_sync(step_fn) if world > 1 and not last else nullcontext()  # reduce once per step
        with sync:
            loss_sum, _ = step_fn(**batch)
            (loss_sum * (world / n_supervised)).backward()
        total = total + loss_sum.detach()
    return float(total)


def held_out_loss(loss_fn, encoded: list, batch_size: int, pad_id: int, info, collate=None) -> float:
    """Mean loss per unit (token for SFT, pair for DPO) over `encoded` (batches sorted by length,
    shared out over ranks)."""
    import torch

    from trainer import dist, sharding
    from trainer.batching import collate as collate_examples

    collate = collate or collate_examples
    order = sorted(range(len(encoded)), key=lambda i: encoded[i].n_tokens)
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    loss_fn.model.eval()  # dropout off
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches[info.rank::info.world]:
            batch = {k: v.to(info.device) for k, v in collate([encoded[i] for i in b], pad_id).items()}
            s, n = loss_fn(**batch)
            total, count = total + float(s), count + int(n)
        # FSDP gathers the weights in every forward: a rank with one batch fewer joins in idle
        idle = sharding.missing_batches(len(batches), info)
        sharding.idle_passes(loss_fn, collate([encoded[order[0]]], pad_id), idle, info, backward=False)
    loss_fn.model.train()
    total, count = dist.sum_all(info, total, count)
    return total / max(count, 1)


# Settings that make the run what it is: `--resume` must be given the same ones, or the steps after
# the checkpoint would belong to another run (a schedule over other totals, other batches). Paths,
# logging, checkpoint cadence, pass splitting and gradient checkpointing (same gradients) may change.
RUN_SETTINGS = ("eval_fraction", "system_prompt", "max_length", "overlong", "method", "beta", "dpo_loss",
                "lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "max_steps", "batch_size",
                "grad_accum", "lr", "weight_decay", "warmup_ratio", "schedule", "max_grad_norm", "dtype", "seed",
                "load_in_4bit", "group_by_length")
FINGERPRINT = "run_fingerprint.json"


def run_fingerprint(cfg: TrainConfig, model_path: str, train_ex: list, eval_ex: list) -> dict:
    """What a resumed run is compared on: the settings above, the model, the starting adapter's
    bytes, and the examples' content (wherever the file now lives)."""
    import dataclasses
    import hashlib
    import json

    from generator.runs import file_sha256

    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x) if f.name != "where"}
        return [plain(v) for v in x] if isinstance(x, (list, tuple)) else x

    def digest(examples) -> str:
        h = hashlib.sha256()
        for ex in examples:
            h.update(json.dumps(plain(ex), sort_keys=True, ensure_ascii=False).encode() + b"\n")
        return h.hexdigest()

    init = Path(cfg.init_adapter).expanduser() / "adapter_model.safetensors" if cfg.init_adapter else None
    return {"settings": {k: getattr(cfg, k) for k in RUN_SETTINGS}, "model": str(model_path),
            "init_adapter": file_sha256(init) if init and init.is_file() else None,
            "train_examples": digest(train_ex), "eval_examples": digest(eval_ex)}


def check_or_record_fingerprint(cfg: TrainConfig, out: Path, info, fingerprint: dict) -> None:
    import json

    path = out / FINGERPRINT
    if not cfg.resume:
        if info.main:
            path.write_text(json.dumps(fingerprint, indent=2))
        return
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # a run from before fingerprints (or its file lost): nothing to compare with
    # a setting newer than the saved fingerprint had its default then
    was = {**{k: getattr(TrainConfig(), k) for k in RUN_SETTINGS}, **saved.get("settings", {})}
    diffs = [f"{k}: {was.get(k)!r} then, {v!r} now" for k, v in fingerprint["settings"].items() if was.get(k) != v]
    names = {"model": "--model", "init_adapter": "--init-adapter (its weights)", "train_examples": "the training data",
             "eval_examples": "the eval data"}
    diffs += [f"{name} changed" for key, name in names.items() if saved.get(key) != fingerprint[key]]
    if diffs:
        raise UserError(f"--resume: {out} was trained with other settings ({'; '.join(diffs[:4])}"
                        f"{f'; {len(diffs) - 4} more' if len(diffs) > 4 else ''}); resume with the same ones, "
                        "or start a new run (--overwrite, or --init-adapter OUT/adapter to build on it)")


def _prepare_out(cfg: TrainConfig, out: Path, info) -> None:
    from trainer import checkpoint, dist

    existing = [name for name in OUTPUTS if (out / name).exists()]
    if cfg.resume:
        if not checkpoint.checkpoint_dirs(out):
            raise UserError(f"--resume: no checkpoint under {out / 'checkpoints'}; "
                            "checkpoints are written every --save-every steps")
    elif existing and not cfg.overwrite:
        raise UserError(f"{out}: already holds a training run ({', '.join(existing)}); pass --resume to continue "
                        "it, --overwrite to replace it, or choose another --out")
    dist.barrier(info)  # every rank has checked before rank 0 deletes anything
    if info.main:
        if existing and not cfg.resume:
            import shutil

            for name in existing:
                p = out / name
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier(info)


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


def _train(cfg: TrainConfig, hooks: Hooks, out: Path, info) -> dict:
    import json
    import random

    import numpy as np
    import torch
    from tqdm import tqdm

    from generator.config import save_config, to_dict
    from generator.models import resolve_model
    from trainer import checkpoint, dist, dpo, sharding
    from trainer.batching import StepPlan, collate, split_by_tokens
    from trainer.data import Fields, load_examples, load_pairs, split_eval
    from trainer.format import Formatter, encode_all, save_prompt_format
    from trainer.metrics import MetricsLog, peak_memory_mb, plot_loss, read_metrics
    from trainer.model import CausalLMLoss, load_student, merge_onto_base, pick_dtype

    def say(msg: str) -> None:
        if info.main:
            print(msg, file=sys.stderr, flush=True)

    # --- data first: a bad file fails in a second, before the model loads ---------------------
    _prepare_out(cfg, out, info)
    is_dpo = cfg.method == "dpo"
    fields = Fields(cfg.instruction_field, cfg.input_field, cfg.output_field, cfg.messages_field)
    load = load_pairs if is_dpo else (lambda path: load_examples(path, fields))
    examples = load(cfg.data)
    if cfg.eval_data:
        train_ex, eval_ex = examples, load(cfg.eval_data)
    else:
        train_ex, eval_ex = split_eval(examples, cfg.eval_fraction, cfg.seed)
    check_or_record_fingerprint(cfg, out, info, run_fingerprint(cfg, resolve_model(cfg.model), train_ex, eval_ex))

    # --- student + LoRA -------------------------------------------------------------------------
    device = info.device
    dtype = pick_dtype(cfg.dtype, device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # identical LoRA init on every rank
    model, tok, stop_ids = load_student(
        resolve_model(cfg.model), sharding.load_device(cfg.strategy, info), dtype, lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.target_modules,
        gradient_checkpointing=cfg.gradient_checkpointing, init_adapter=cfg.init_adapter,
        load_in_4bit=cfg.load_in_4bit)
    torch.manual_seed(cfg.seed + info.rank)  # dropout masks differ per rank, as they would on one big batch

    formatter = Formatter(tok, cfg.system_prompt, stop_ids)
    encode = dpo.encode_pairs if is_dpo else encode_all
    train_enc, stats = encode(formatter, train_ex, cfg.max_length, cfg.overlong)
    eval_enc, eval_stats = encode(formatter, eval_ex, cfg.max_length, cfg.overlong)
    if not train_enc:
        raise UserError(f"{cfg.data}: all {stats.total} training examples are longer than --max-length "
                        f"{cfg.max_length} tokens; raise --max-length or use --overlong truncate")

    # A DPO pair costs two padded rows of its longer side; batches group pairs by that.
    lengths = [e.batch_length if is_dpo else e.n_tokens for e in train_enc]
    collate_fn = dpo.collate_pairs if is_dpo else collate
    plan = StepPlan(lengths, cfg.batch_size, cfg.grad_accum, info.world, cfg.seed, cfg.group_by_length)
    # Activation memory grows with the tokens of one forward pass (~4 MB a token for SmolLM2-135M in
    # fp32), while CPU throughput per token is flat from ~400 tokens a pass up: on CPU passes are
    # capped at 1024 tokens by default (half the peak memory of 2048, same speed).
    pass_tokens = cfg.max_pass_tokens if cfg.max_pass_tokens is not None else (1024 if device.type == "cpu" else 0)
    total = cfg.max_steps or cfg.epochs * plan.steps_per_epoch
    autocast = torch.bfloat16 if dtype == torch.bfloat16 and device.type == "cuda" else None
    loss_fn = CausalLMLoss(model, autocast_dtype=autocast)
    sharded = sharding.active(cfg.strategy, info)
    if sharded:  # before the optimizer is built: sharding replaces the parameters
        sharding.shard(loss_fn, info)
    elif cfg.strategy == "fsdp":
        say("--strategy fsdp with one process: nothing to shard, training unsharded")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(cfg.schedule, round(cfg.warmup_ratio * total), total))
    if is_dpo:
        # The reference: the model as it starts (adapter off from a base model; the loaded SFT
        # adapter with --init-adapter), computed once, before a resumed run loads its checkpoint.
        say(f"dpo: reference log-probs of {len(train_enc) + len(eval_enc)} pairs "
            f"({'the loaded adapter' if cfg.init_adapter else 'adapter off'})")
        for part in (train_enc, eval_enc):
            dpo.compute_reference(loss_fn, part, cfg.batch_size, tok.pad_token_id, device,
                                  adapter_off=not cfg.init_adapter, pass_tokens=pass_tokens)
        loss_fn = dpo.DPOLoss(loss_fn, cfg.beta, cfg.dpo_loss)
    if hooks.on_data:
        hooks.on_data(train_enc, eval_enc)
    step_fn = loss_fn
    if info.active and not sharded:
        step_fn = torch.nn.parallel.DistributedDataParallel(
            loss_fn, device_ids=[device.index] if device.type == "cuda" else None)

    start = 0
    if cfg.resume:
        ckpt, state = checkpoint.load_newest_good(out, info, model, optimizer, scheduler, sharded)
        start = state["step"]
        say(f"resuming from {ckpt} (step {start})")
    n_trainable = sum(p.numel() for p in params)
    unit = "pairs" if is_dpo else "examples"
    say(f"train: {len(train_enc)} {unit} ({stats.truncated} truncated, {stats.dropped} dropped), "
        f"eval: {len(eval_enc)}; {total} steps x {cfg.batch_size * cfg.grad_accum * info.world} {unit}; "
        f"LoRA r={model.peft_config['default'].r} on {','.join(sorted(model.peft_config['default'].target_modules))} "
        f"({n_trainable / 1e6:.2f}M trainable); {device.type} {str(dtype).replace('torch.', '')}"
        + (f"; {info.world} processes" + (" (FSDP)" if sharded else "") if info.active else ""))

    metrics = None
    if info.main:
        save_config(cfg, out / "train_config.yaml")
        metrics = MetricsLog(out, resume_step=start if cfg.resume else None, report_to=cfg.report_to,
                             config=to_dict(cfg))
    if hooks.on_model:
        hooks.on_model(model)

    # --- the loop -------------------------------------------------------------------------------
    model.train()  # from_pretrained returns eval mode, which would silently switch LoRA dropout off
    pad_id = tok.pad_token_id
    train_time, tokens_all, tokens_sup, eval_loss = 0.0, 0, 0, None

    def eval_extra(fn) -> dict:  # DPO's reward accuracy / margin on the eval pairs
        return fn.take_metrics(info, prefix="eval_") if is_dpo else {}

    bar = tqdm(total=total, initial=start, disable=not (info.main and cfg.progress), desc="train",
               unit="step", dynamic_ncols=True, file=sys.stderr)
    try:
        for step in range(start, total):
            t0 = time.perf_counter()
            per_rank = plan.step(step)
            group = [i for micro in per_rank for mb in micro for i in mb]
            n_sup = sum(train_enc[i].n_supervised for i in group)  # the whole step, all ranks
            n_tok = sum(train_enc[i].n_tokens for i in group)
            mine = [{k: v.to(device) for k, v in collate_fn([train_enc[i] for i in part], pad_id).items()}
                    for mb in per_rank[info.rank] for part in split_by_tokens(mb, lengths, pass_tokens)]
            lr = scheduler.get_last_lr()[0]

            if sharded:  # every rank makes as many passes as the busiest, the idle ones first
                idle = sharding.missing_passes(per_rank, lengths, pass_tokens, info.rank)
                sharding.idle_passes(step_fn, mine[0], idle, info, backward=True)
            loss = dist.sum_all(info, accumulate(step_fn, mine, n_sup, info))[0] / n_sup
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or float("inf")).item()
            if not (math.isfinite(loss) and math.isfinite(norm)):
                what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {norm}"
                raise TrainingDiverged(
                    f"training stopped at step {step + 1}: {what} (lr {lr:.3g}); the adapter was not saved. "
                    "Lower --lr, raise --warmup-ratio, check the data, or use --dtype float32"
                    + ("; resume from the last good checkpoint with --resume" if cfg.save_every else ""))
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            dt = time.perf_counter() - t0
            train_time, tokens_all, tokens_sup = train_time + dt, tokens_all + n_tok, tokens_sup + n_sup
            record = {"step": step + 1, "epoch": round((step + 1) / plan.steps_per_epoch, 4), "loss": loss,
                      "lr": lr, "grad_norm": norm, "tokens_per_s": n_tok / dt, "supervised_tokens_per_s": n_sup / dt,
                      "peak_memory_mb": round(peak_memory_mb(device), 1)}
            if is_dpo:  # its unit is a pair, not a supervised token
                del record["supervised_tokens_per_s"]
                record |= {"pairs_per_s": len(group) / dt, **loss_fn.take_metrics(info)}
            if metrics and ((step + 1) % cfg.log_every == 0 or step + 1 == total):
                metrics.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_all / train_time:.0f}", refresh=False)

            done = step + 1
            if eval_enc and cfg.eval_every and done % cfg.eval_every == 0 and done < total:
                eval_loss = held_out_loss(loss_fn, eval_enc, cfg.batch_size, pad_id, info, collate_fn)
                extra = eval_extra(loss_fn)  # on every rank: it sums over ranks
                if metrics:
                    metrics.log({"step": done, "eval_loss": eval_loss, **extra})
            if cfg.save_every and done % cfg.save_every == 0 and done < total:
                checkpoint.save(out, info, done, plan.epoch_of(done), done % plan.steps_per_epoch, model,
                                optimizer, scheduler, cfg.keep_checkpoints, sharded)
            if hooks.on_step:
                hooks.on_step(done, record)
        bar.close()

        # --- outputs (rank 0) ---------------------------------------------------------------
        if eval_enc:
            eval_loss = held_out_loss(loss_fn, eval_enc, cfg.batch_size, pad_id, info, collate_fn)
            extra = eval_extra(loss_fn)
            if metrics:
                metrics.log({"step": total, "eval_loss": eval_loss, **extra})
        adapter = sharding.full_trainable_state(model, info) if sharded else None  # every rank gathers
        summary = {}
        if info.main:
            save_prompt_format(out / "adapter", tok, formatter)  # the prompt eval and serve must use
            model.save_pretrained(out / "adapter", state_dict=adapter)
            tok.save_pretrained(out / "adapter")
            history = read_metrics(out / "metrics.jsonl")
            losses = [r["loss"] for r in history if "loss" in r]
            summary = {
                "steps": total, "epochs": round(total / plan.steps_per_epoch, 4),
                "final_loss": losses[-1] if losses else None,
                "eval_loss": eval_loss,
                "tokens_per_s": tokens_all / train_time if train_time else None,
                "supervised_tokens_per_s": tokens_sup / train_time if train_time else None,
                "train_seconds": round(train_time, 2),
                "peak_memory_mb": round(peak_memory_mb(device), 1),
                "examples": {"train": len(train_enc), "eval": len(eval_enc),
                             "truncated": stats.truncated + eval_stats.truncated,
                             "dropped": stats.dropped + eval_stats.dropped},
                "processes": info.world, "sharded": sharded, "device": device.type, "dtype": str(dtype).replace("torch.", ""),
                "model": resolve_model(cfg.model), "adapter": str(out / "adapter"),
                "method": cfg.method, "load_in_4bit": cfg.load_in_4bit,
            }
            if is_dpo:
                last = [r for r in history if "reward_accuracy" in r]
                del summary["supervised_tokens_per_s"]
                summary |= {"pairs_per_s": tokens_sup / train_time if train_time else None,  # a pair is DPO's unit
                            "final_reward_accuracy": last[-1]["reward_accuracy"] if last else None,
                            "final_reward_margin": last[-1]["reward_margin"] if last else None,
                            "beta": cfg.beta, "dpo_loss": cfg.dpo_loss, "init_adapter": cfg.init_adapter}
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            plot_loss(out / "metrics.jsonl", out / "loss.png")
            if cfg.merge:
                # a 4-bit base cannot hold the merge: the adapter goes into a fresh bf16 base instead
                # (sharded: the frozen base is the one on disk, so no need to gather it either)
                merged = (merge_onto_base(resolve_model(cfg.model), out / "adapter",
                                          torch.bfloat16 if cfg.load_in_4bit else dtype)
                          if cfg.load_in_4bit or sharded else model.merge_and_unload())
                merged.save_pretrained(out / "merged")
                tok.save_pretrained(out / "merged")
                save_prompt_format(out / "merged", tok, formatter)
            say(f"done: {out / 'adapter'}  final loss {summary['final_loss']:.4f}"
                + (f"  eval loss {eval_loss:.4f}" if eval_loss is not None else "")
                + (f"  {summary['tokens_per_s']:.0f} tokens/s" if train_time else ""))
        dist.barrier(info)
        return summary
    finally:
        bar.close()
        if metrics:  # an exception on its way out marks the trackers' runs failed
            metrics.close(failed=sys.exc_info()[1] is not None)


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
