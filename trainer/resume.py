"""What a training output folder must match to be resumed, and how it is made ready.

`--resume` continues a run only with the settings, model, starting adapter and examples it was
started with (`run_fingerprint.json`, compared in one line naming what changed); without
`--resume`, an existing run is replaced only with `--overwrite`.
"""

from __future__ import annotations

from pathlib import Path

from generator.config import defaults
from generator.errors import UserError
from trainer.config import TrainConfig

FINGERPRINT = "run_fingerprint.json"
OUTPUTS = ("adapter", "merged", "checkpoints", "tensorboard", "wandb", "mlruns", "trackers.json",
           "metrics.jsonl", "summary.json", "loss.png", "train_config.yaml", FINGERPRINT)


# Settings that make the run what it is: `--resume` must be given the same ones, or the steps after
# the checkpoint would belong to another run (a schedule over other totals, other batches). Paths,
# logging, checkpoint cadence, pass splitting and gradient checkpointing (same gradients) may change.
RUN_SETTINGS = ("eval_fraction", "system_prompt", "max_length", "overlong", "method", "beta", "dpo_loss",
                "lora_r", "lora_alpha", "lora_dropout", "target_modules", "epochs", "max_steps", "batch_size",
                "grad_accum", "lr", "weight_decay", "warmup_ratio", "schedule", "max_grad_norm", "dtype", "seed",
                "load_in_4bit", "group_by_length", "packing")  # not padding_free: same gradients either way


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
    was = {**defaults(TrainConfig), **saved.get("settings", {})}
    diffs = [f"{k}: {was.get(k)!r} then, {v!r} now" for k, v in fingerprint["settings"].items() if was.get(k) != v]
    names = {"model": "--model", "init_adapter": "--init-adapter (its weights)", "train_examples": "the training data",
             "eval_examples": "the eval data"}
    diffs += [f"{name} changed" for key, name in names.items() if saved.get(key) != fingerprint[key]]
    if diffs:
        raise UserError(f"--resume: {out} was trained with other settings ({'; '.join(diffs[:4])}"
                        f"{f'; {len(diffs) - 4} more' if len(diffs) > 4 else ''}); resume with the same ones, "
                        "or start a new run (--overwrite, or --init-adapter OUT/adapter to build on it)")


def prepare_out(cfg: TrainConfig, out: Path, info) -> None:
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
