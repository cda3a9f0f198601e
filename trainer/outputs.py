"""What a finished training run writes (rank 0): the adapter with the prompt format that eval and
serve must use, summary.json, loss.png and, with --merge, the merged model."""

from __future__ import annotations


def write_outputs(job) -> dict:
    """Save the adapter (with the prompt format eval and serve must use), summary.json, loss.png
    and, with --merge, the merged model; every rank returns together."""
    import json

    import torch

    from generator.models import resolve_model
    from trainer import dist, sharding
    from trainer.format import save_prompt_format
    from trainer.metrics import peak_memory_mb, plot_loss, read_metrics
    from trainer.model import merge_onto_base

    cfg, out, info, model, tok = job.cfg, job.out, job.info, job.model, job.tok
    adapter = sharding.full_trainable_state(model, info) if job.sharded else None  # every rank gathers
    summary = {}
    if info.main:
        save_prompt_format(out / "adapter", tok, job.formatter)
        model.save_pretrained(out / "adapter", state_dict=adapter)
        tok.save_pretrained(out / "adapter")
        history = read_metrics(out / "metrics.jsonl")
        losses = [r["loss"] for r in history if "loss" in r]
        per_s = (lambda n: n / job.train_time) if job.train_time else (lambda n: None)
        summary = {
            "steps": job.total, "epochs": round(job.total / job.plan.steps_per_epoch, 4),
            "final_loss": losses[-1] if losses else None,
            "eval_loss": job.eval_loss,
            "tokens_per_s": per_s(job.tokens_all),
            "supervised_tokens_per_s": per_s(job.tokens_sup),
            "train_seconds": round(job.train_time, 2),
            "peak_memory_mb": round(peak_memory_mb(info.device), 1),
            "examples": {"train": len(job.train_enc), "eval": len(job.eval_enc),
                         "truncated": job.stats.truncated + job.eval_stats.truncated,
                         "dropped": job.stats.dropped + job.eval_stats.dropped},
            "processes": info.world, "sharded": job.sharded, "device": info.device.type,
            "dtype": str(job.dtype).replace("torch.", ""),
            "model": resolve_model(cfg.model), "adapter": str(out / "adapter"),
            "method": cfg.method, "load_in_4bit": cfg.load_in_4bit,
            "batches": "packed" if cfg.packing else "padding-free" if job.flat else "padded",
        }
        if job.is_dpo:
            last = [r for r in history if "reward_accuracy" in r]
            del summary["supervised_tokens_per_s"]
            summary |= {"pairs_per_s": per_s(job.tokens_sup),  # a pair is DPO's unit
                        "final_reward_accuracy": last[-1]["reward_accuracy"] if last else None,
                        "final_reward_margin": last[-1]["reward_margin"] if last else None,
                        "beta": cfg.beta, "dpo_loss": cfg.dpo_loss, "init_adapter": cfg.init_adapter}
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_loss(out / "metrics.jsonl", out / "loss.png")
        if cfg.merge:
            # a 4-bit base cannot hold the merge: the adapter goes into a fresh bf16 base instead
            # (sharded: the frozen base is the one on disk, so no need to gather it either)
            merged = (merge_onto_base(resolve_model(cfg.model), out / "adapter",
                                      torch.bfloat16 if cfg.load_in_4bit else job.dtype)
                      if cfg.load_in_4bit or job.sharded else model.merge_and_unload())
            merged.save_pretrained(out / "merged")
            tok.save_pretrained(out / "merged")
            save_prompt_format(out / "merged", tok, job.formatter)
        job.say(f"done: {out / 'adapter'}  final loss {summary['final_loss']:.4f}"
                + (f"  eval loss {job.eval_loss:.4f}" if job.eval_loss is not None else "")
                + (f"  {summary['tokens_per_s']:.0f} tokens/s" if job.train_time else ""))
    dist.barrier(info)
    return summary
