"""Sprout's DPO (`sprout train --method dpo`) vs TRL's DPOTrainer (+ peft) on the same job, each
side in its own subprocess.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same synthetic preference pairs
(TRL's conversational preference format: prompt = [user turn], chosen / rejected = [assistant
turn]; the chosen answer does the task, the rejected one gets it wrong), same LoRA (r, alpha = 2r,
dropout 0.05, all 7 linear modules) from the same initialisation, same batch size, steps, learning
rate, linear schedule, beta and sigmoid loss, fp32, no gradient checkpointing. The reference is the
model as it starts: ours switches the adapter off; TRL 1.16, given a peft model and no ref_model,
copies the starting adapter into a frozen "ref" adapter -- the same function while LoRA's B is zero. TRL's DPOConfig defaults (bf16 on GPU, lr 1e-6, every dropout off) are set to match.

Reported per side: pairs/s over the training loop, peak RSS (CPU) or peak CUDA memory, the last
step's training loss, and -- computed afterwards by the same code for both tuned models -- the reward
accuracy, mean reward margin and mean sigmoid DPO loss on all the training pairs (policy vs the
adapter-off reference, summed response log-probs with Sprout's mask). That last loss is the one to
compare: the last step's loss depends on which pairs each side's batch order put in that step.

    python benchmarks/dpo_vs_trl.py                        # default job
    python benchmarks/dpo_vs_trl.py --steps 4 --pairs 16 --max-length 128 --sides ours   # tiny, no TRL

Needs TRL (the `bench` extra) for the TRL side: pip install trl -- check first with
`pip install --dry-run trl` that it leaves torch / transformers / peft alone.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ("apple river stone cloud garden window mountain silver engine forest candle bridge ocean paper "
         "market winter signal violet harbor lantern meadow copper thunder pencil island saddle orbit").split()


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = rng.choices(WORDS, k=rng.randint(3, 30))
        wrong = words[:]
        rng.shuffle(wrong)
        rows.append({"prompt": [{"role": "user", "content": "Reverse the order of these words: " + " ".join(words)}],
                     "chosen": [{"role": "assistant", "content": " ".join(words[::-1])}],
                     "rejected": [{"role": "assistant", "content": " ".join(wrong)}]})
    return rows


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lora_config(a):
    from peft import LoraConfig

    return LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def reward_stats(model, tok, pairs_path: Path, max_length: int, beta: float) -> dict:
    """Reward accuracy and mean margin of `model` on the pairs, the same code for both sides."""
    import torch

    from trainer.data import load_pairs
    from trainer.dpo import collate_pairs, compute_reference, encode_pairs, sequence_logps
    from trainer.format import Formatter
    from trainer.model import CausalLMLoss

    lm = CausalLMLoss(model)
    enc, _ = encode_pairs(Formatter(tok), load_pairs(pairs_path), max_length, "truncate")
    device = next(model.parameters()).device
    compute_reference(lm, enc, 8, tok.pad_token_id, device, adapter_off=True)
    model.eval()
    wins, margin, loss = 0, 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(enc), 8):
            part = enc[i:i + 8]
            b = collate_pairs(part, tok.pad_token_id)
            logps = sequence_logps(lm, *(b[k].to(device) for k in ("input_ids", "attention_mask", "labels")))
            for j, p in enumerate(part):
                m = beta * ((float(logps[j]) - p.ref_chosen) - (float(logps[len(part) + j]) - p.ref_rejected))
                wins, margin = wins + (m > 0), margin + m
                loss += -float(torch.nn.functional.logsigmoid(torch.tensor(m)))  # the sigmoid DPO loss
    return {"reward_accuracy": wins / len(enc), "reward_margin": margin / len(enc), "pairs_loss": loss / len(enc)}


def run_ours(a, work: Path) -> dict:
    from transformers import AutoTokenizer

    from trainer.config import TrainConfig
    from trainer.train import Hooks, train

    seen = {}
    cfg = TrainConfig(data=str(work / "pairs.jsonl"), out=str(work / "ours"), model=a.model, method="dpo",
                      beta=a.beta, max_steps=a.steps, batch_size=a.batch_size, max_length=a.max_length, lr=a.lr,
                      schedule="linear", warmup_ratio=0.0, lora_r=a.lora_r, lora_alpha=2 * a.lora_r,
                      lora_dropout=0.05, eval_fraction=0.0, eval_every=0, save_every=0, progress=False, seed=a.seed,
                      dtype="float32", overwrite=True, group_by_length=a.group_by_length)
    s = train(cfg, Hooks(on_model=lambda m: seen.update(model=m)))
    mem = peak_memory_mb()
    tok = AutoTokenizer.from_pretrained(work / "ours" / "adapter")
    return {"train_seconds": s["train_seconds"], "pairs_per_s": s["pairs_per_s"], "peak_memory_mb": mem,
            "final_loss": s["final_loss"],
            **reward_stats(seen["model"], tok, work / "pairs.jsonl", a.max_length, a.beta)}


def run_trl(a, work: Path) -> dict:
    import datasets
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from generator.models import resolve_model

    path = resolve_model(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(a.seed)  # the same sequence as Sprout's load_student: the same LoRA init
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model = get_peft_model(model, lora_config(a))
    ds = datasets.load_dataset("json", data_files=str(work / "pairs.jsonl"), split="train")
    args = DPOConfig(
        output_dir=str(work / "trl"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_length=a.max_length, beta=a.beta, loss_type="sigmoid",
        bf16=False, fp16=False, gradient_checkpointing=False, seed=a.seed, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        # TRL turns every dropout module off by default (LoRA's too); ours trains with LoRA dropout
        # 0.05 as set above. Left on, the two sides train different models: the first run of this
        # benchmark (TRL's default) ended at loss 0.099 vs ours 0.406 with the same reward accuracy.
        disable_dropout=False)
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=ds, processing_class=tok)
    t0 = time.perf_counter()
    result = trainer.train()
    secs = time.perf_counter() - t0
    mem = peak_memory_mb()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    pairs = a.steps * a.batch_size
    return {"train_seconds": result.metrics.get("train_runtime", secs), "pairs_per_s": pairs / secs,
            "peak_memory_mb": mem, "final_loss": losses[-1] if losses else None,
            **reward_stats(trainer.model, tok, work / "pairs.jsonl", a.max_length, a.beta)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--pairs", type=int, default=96)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--sides", default="ours,trl", help="which sides to run, in order")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--seed", type=int, default=0, help="LoRA init, batch order and dropout (both sides)")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="ours: length-grouped batches (Sprout's default); --no-group-by-length draws random "
                        "batches as TRL's default sampler does -- the like-for-like setting for the loss")
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.side:
        result = (run_ours if a.side == "ours" else run_trl)(a, Path(a.work))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    work = Path(tempfile.mkdtemp(prefix="sprout-dpo-bench-"))
    (work / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_pairs(a.pairs)))
    results = {}
    for side in a.sides.split(","):
        cmd = [sys.executable, __file__, "--side", side, "--work", str(work)] + sys.argv[1:]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-5000:], file=sys.stderr)
            return 1
        line = next(ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("RESULT "))
        results[side] = json.loads(line[7:])
    print(f"job: {a.pairs} pairs, {a.steps} steps x batch {a.batch_size}, max_length {a.max_length}, LoRA r={a.lora_r} "
          f"alpha={2 * a.lora_r}, lr {a.lr} linear, beta {a.beta} sigmoid, fp32, seed {a.seed}, ours "
          f"{'length-grouped' if a.group_by_length else 'random'} batches; model "
          f"{a.model or 'SmolLM2-135M-Instruct (embedded)'}\n")
    rows = [("pairs/s", "pairs_per_s", "{:.2f}"), ("train loop seconds", "train_seconds", "{:.1f}"),
            ("peak memory MB", "peak_memory_mb", "{:.0f}"), ("final train loss", "final_loss", "{:.4f}"),
            ("reward accuracy (train pairs)", "reward_accuracy", "{:.3f}"),
            ("reward margin (train pairs)", "reward_margin", "{:.4f}"),
            ("DPO loss on all train pairs, same code", "pairs_loss", "{:.4f}")]
    sides = list(results)
    print(f"{'':32}" + "".join(f"{s:>12}" for s in sides))
    for label, key, fmt in rows:
        print(f"{label:32}" + "".join(f"{fmt.format(results[s][key]) if results[s][key] is not None else '-':>12}"
                                      for s in sides))
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
