"""Sprout's trainer vs TRL's SFTTrainer (+ peft) on the same job, each in its own subprocess.

Same model (the embedded SmolLM2-135M-Instruct unless --model), same deterministic mixed-length
instruction data (synthetic Alpaca rows, ~50-450 tokens once formatted with the chat template:
reverse / sort / upper-case / count words, list squares), same LoRA (r, alpha = 2r, dropout 0.05,
all 7 linear modules) from the same initialisation, same batch size, max length, steps, learning
rate and linear schedule, fp32, no gradient checkpointing, loss on the completion only. TRL's
SFTConfig defaults to bf16, gradient checkpointing and lr 2e-5; those are set to match.
TRL runs in each configuration of --trl-configs, each in its own process:
  default          TRL's defaults otherwise: random batch order, padding to each batch's longest example;
  group_by_length  batches of similar lengths (`train_sampling_strategy="group_by_length"`), as Sprout does;
  padding_free     each batch flattened into one row with position ids restarting per example, no
                   padding at all (transformers' SDPA path builds the block-diagonal mask from them);
  packing          best-fit-decreasing packing into rows of max_length (padding-free): the same rows
                   in fewer, fuller batches -- one epoch over the rows instead of --steps steps, so
                   its held-out loss comes after fewer optimizer steps.
Sprout runs in each configuration of --ours-configs (OURS_CONFIGS): its defaults (padding-free on a
CUDA GPU, padded batches on CPU), padded or padding-free forced, --packing (one epoch, like TRL's),
or a --max-pass-tokens cap. Each is compared against the best TRL configuration (highest
supervised tokens/s) and against TRL's default.

Reported per side: tokens/s over the training loop counting all (non-padding) tokens and counting
supervised tokens, the same per CPU-second of the process, peak RSS (right after training, before
the eval below), the mean training loss of the last 5 steps, and the loss of both tuned models on
the same held-out rows computed by the same code -- the "final loss" compared, since per-step
training losses depend on which examples each side's batch order put in the last steps.

    python benchmarks/train_vs_trl.py                      # ~6 min on an idle 2-core machine
    python benchmarks/train_vs_trl.py --repeat 2 --json bench.json
    python benchmarks/train_vs_trl.py --ours-configs default,packing --trl-configs packing,group_by_length

On a CUDA GPU (used when present) both sides train in bf16 (weights in bf16, the LoRA
matrices in fp32 as peft keeps them; TRL with `bf16=True` on the bf16-loaded model), memory is the
peak GPU memory allocated (torch.cuda.max_memory_allocated), and MFU is reported: tokens/s x 4N
over the card's dense bf16 peak (989 TFLOP/s for H100/H200 SXM), N the weights of every matmul
(decoder linears + LM head); 4N = forward 2N + backward to the activations 2N, the frozen base
needing no weight gradients; attention's score FLOPs are not counted.

On a machine shared with other work the figures swing with the neighbours' load (the mean load
average during each side is printed): --repeat N alternates the sides and keeps each one's fastest
run. Both sides run with the caller's environment (OMP_WAIT_POLICY, MALLOC_* ...), unchanged.

Needs TRL (the `bench` extra): pip install trl -- check first with `pip install --dry-run trl` that it
leaves torch / transformers / peft alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
         "market winter signal violet harbor lantern meadow copper thunder pencil island saddle orbit "
         "marble castle feather planet compass tiger velvet canyon rocket basket mirror desert falcon "
         "blanket glacier kettle jungle anchor meteor puzzle tunnel walnut zebra").split()


# --- data ----------------------------------------------------------------------------------------
def make_row(rng: random.Random) -> dict:
    """One synthetic Alpaca row; lengths spread from a few to ~110 words on either side."""
    task = rng.randrange(5)
    k = rng.randint(3, 110)
    words = rng.choices(WORDS, k=k)
    text = " ".join(words)
    if task == 0:
        return {"instruction": "Reverse the order of these words.", "input": text, "output": " ".join(words[::-1])}
    if task == 1:
        return {"instruction": f"Sort these words alphabetically: {text}", "input": "",
                "output": " ".join(sorted(words))}
    if task == 2:
        return {"instruction": "Rewrite the text in upper case.", "input": text, "output": text.upper()}
    if task == 3:
        return {"instruction": f"How many words are in this text? {text}", "input": "",
                "output": f"The text has {k} words."}
    nums = [rng.randint(1, 99) for _ in range(max(1, k // 5))]
    return {"instruction": "List these numbers with their squares, one per line: " + ", ".join(map(str, nums)),
            "input": "", "output": "\n".join(f"{n} squared is {n * n}" for n in nums)}


def make_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [make_row(rng) for _ in range(n)]


def write_data(work: Path, n_train: int, n_eval: int) -> None:
    rows, eval_rows = make_rows(n_train, 0), make_rows(n_eval, 1)
    with open(work / "train.jsonl", "w") as f:  # Sprout: Alpaca rows
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(work / "train_trl.jsonl", "w") as f:  # TRL: the same rows as conversational prompt-completion
        for r in rows:
            user = f"{r['instruction']}\n\n{r['input']}" if r["input"] else r["instruction"]
            f.write(json.dumps({"prompt": [{"role": "user", "content": user}],
                                "completion": [{"role": "assistant", "content": r["output"]}]}) + "\n")
    (work / "eval.json").write_text(json.dumps(eval_rows))


# --- measurements shared by both sides -----------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process (all threads): a throughput measure that other work on a shared
    machine disturbs less than wall-clock time does."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def device_of() -> str:
    """Sprout trains on the GPU when there is one (it has no device setting); TRL is told the same."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


PEAK_BF16 = 989e12  # dense bf16 FLOP/s of an H100 / H200 SXM (datasheet)


def gpu_figures(model, tokens_per_s: float) -> dict:
    """Peak GPU memory so far and MFU (see the docstring); {} on CPU."""
    import torch
    from torch import nn

    if not torch.cuda.is_available():
        return {}
    n = sum(m.weight.numel() for name, m in model.named_modules() if isinstance(m, nn.Linear) and "lora_" not in name)
    return {"peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20, "matmul_params": n,
            "mfu": tokens_per_s * 4 * n / PEAK_BF16, "gpu": torch.cuda.get_device_name()}


WARMUP_STEPS = 5  # the first steps pay for CUDA/cuBLAS start-up and the allocator growing


def steady(stamps: list[float], counts: list[tuple[int, int]]) -> dict:
    """Tokens/s after the first WARMUP_STEPS steps, from the wall-clock time at the end of each step
    and each step's (tokens, supervised tokens): the rate a long run settles at."""
    if len(stamps) <= WARMUP_STEPS + 1:
        return {}
    secs = stamps[-1] - stamps[WARMUP_STEPS - 1]
    later = counts[WARMUP_STEPS:len(stamps)]
    return {"steady_tokens_per_s": sum(c[0] for c in later) / secs,
            "steady_supervised_tokens_per_s": sum(c[1] for c in later) / secs}


def heldout_loss(model, tok, rows: list[dict], max_length: int) -> float:
    """Mean token loss on the held-out rows, Sprout's formatting and mask, for either side's model."""
    import torch

    from trainer.batching import collate
    from trainer.data import Fields, to_example
    from trainer.format import Formatter, encode_all
    from trainer.model import CausalLMLoss

    encoded, _ = encode_all(Formatter(tok), [to_example(r, "eval", Fields()) for r in rows], max_length, "truncate")
    loss_fn = CausalLMLoss(model)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(encoded), 8):
            batch = {k: v.to(model.device) for k, v in collate(encoded[i:i + 8], tok.pad_token_id).items()}
            s, n = loss_fn(**batch)
            total, count = total + float(s), count + int(n)
    return total / count


def lora_checksum(model) -> float:
    """Sum of |w| over the LoRA A matrices: equal on both sides when they start from the same init."""
    return float(sum(p.detach().abs().sum() for n, p in model.named_parameters() if "lora_A" in n))


def lora_config(a):
    from peft import LoraConfig

    return LoraConfig(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


# --- the two sides (each runs in its own process) ------------------------------------------------
OURS_CONFIGS = {  # Sprout's settings (--ours-configs); packing, like TRL's, is one epoch over the rows
    "default": {},  # padding-free on a CUDA GPU with torch's varlen attention, padded batches elsewhere
    "padded": {"padding_free": False},
    "padding_free": {"padding_free": True},
    "packing": {"packing": True, "max_steps": None, "epochs": 1},
    # the same steps with each micro-batch cut into forward passes of at most N tokens: less memory
    "pass4096": {"max_pass_tokens": 4096},
    "pass2048": {"max_pass_tokens": 2048},
}


def run_ours(a, work: Path) -> dict:
    from trainer.config import TrainConfig
    from trainer.train import Hooks, train

    seen, cpu, stamps, counts = {}, {}, [], []

    def on_step(step, record):
        stamps.append(time.perf_counter())
        counts.append((record["tokens_per_s"] * record["step_seconds"],
                       record["supervised_tokens_per_s"] * record["step_seconds"]))
        cpu["end"] = cpu_seconds()

    cfg = TrainConfig(data=str(work / "train.jsonl"), out=str(work / "ours"), model=a.model, max_steps=a.steps,
                      batch_size=a.batch_size, max_length=a.max_length, lr=a.lr, schedule="linear", warmup_ratio=0.0,
                      lora_r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.05, eval_fraction=0.0, eval_every=0,
                      save_every=0, progress=False, seed=0, gradient_checkpointing=a.gradient_checkpointing,
                      overwrite=True)
    cfg = TrainConfig(**{**vars(cfg), **OURS_CONFIGS[a.config]})
    s = train(cfg, Hooks(on_model=lambda m: (seen.update(model=m, init=lora_checksum(m)),
                                             cpu.update(start=cpu_seconds())), on_step=on_step))
    rss, gpu = peak_rss_mb(), gpu_figures(seen["model"], s["tokens_per_s"])
    gpu |= steady(stamps, counts)
    losses = [r["loss"] for r in map(json.loads, (work / "ours" / "metrics.jsonl").read_text().splitlines())
              if "loss" in r]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work / "ours" / "adapter")
    return {"batches": s["batches"], "lora_init_checksum": seen["init"], "train_seconds": s["train_seconds"],
            "cpu_seconds": cpu["end"] - cpu["start"],
            "tokens": round(s["tokens_per_s"] * s["train_seconds"]),
            "supervised_tokens": round(s["supervised_tokens_per_s"] * s["train_seconds"]),
            "tokens_per_s": s["tokens_per_s"],
            "supervised_tokens_per_s": s["supervised_tokens_per_s"], "peak_rss_mb": rss, **gpu, "losses": losses,
            "heldout_loss": heldout_loss(seen["model"], tok, json.loads((work / "eval.json").read_text()),
                                         a.max_length)}


class CountingCollator:
    """Wraps TRL's collator to count the tokens its batches carry (the collator runs in-process)."""

    def __init__(self, inner):
        self.inner, self.tokens, self.supervised, self.per_batch = inner, 0, 0, []

    def __call__(self, features):
        batch = self.inner(features)
        # padding-free / packed batches carry no attention mask: every position is a real token
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())
        supervised = int((batch["labels"] != -100).sum())
        self.tokens, self.supervised = self.tokens + tokens, self.supervised + supervised
        self.per_batch.append((tokens, supervised))
        return batch


TRL_CONFIGS = {  # SFTConfig settings a careful user would try on this hardware (see the docstring)
    "default": {},
    "group_by_length": {"train_sampling_strategy": "group_by_length"},
    # TRL refuses max_length without packing here (it cannot truncate a flattened batch); the
    # default job's rows (<= ~450 tokens) fit --max-length 512, so nothing is cut on either side
    "padding_free": {"padding_free": True, "max_length": None},
    "packing": {"packing": True, "packing_strategy": "bfd", "max_steps": -1, "num_train_epochs": 1},
}


def run_trl(a, work: Path) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from generator.models import resolve_model

    from peft import get_peft_model

    path = resolve_model(a.model)
    tok = AutoTokenizer.from_pretrained(path)
    # Seed, load, wrap: the same sequence as Sprout's load_student, so both sides start from the
    # same LoRA initialisation and differ only in batch order and dropout masks.
    torch.manual_seed(0)
    cuda = device_of() == "cuda"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32)
    model = get_peft_model(model, lora_config(a))
    ds = datasets.load_dataset("json", data_files=str(work / "train_trl.jsonl"), split="train")
    settings = dict(
        output_dir=str(work / "trl"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        gradient_accumulation_steps=1, learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, max_length=a.max_length, completion_only_loss=True, packing=False,
        bf16=cuda, fp16=False, gradient_checkpointing=a.gradient_checkpointing, use_cpu=not cuda, seed=0,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0)
    args = SFTConfig(**{**settings, **TRL_CONFIGS[a.trl_config]})
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    init = lora_checksum(model)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    stamps = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    trainer.add_callback(StepClock())
    cpu0 = cpu_seconds()
    result = trainer.train()
    cpu1 = cpu_seconds()
    rss = peak_rss_mb()
    secs = result.metrics["train_runtime"]
    gpu = gpu_figures(trainer.model, counter.tokens / secs)
    gpu |= steady(stamps, counter.per_batch)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"lora_init_checksum": init, "train_seconds": secs, "cpu_seconds": cpu1 - cpu0, "tokens": counter.tokens,
            "supervised_tokens": counter.supervised, "tokens_per_s": counter.tokens / secs,
            "supervised_tokens_per_s": counter.supervised / secs, "peak_rss_mb": rss, **gpu, "losses": losses,
            "heldout_loss": heldout_loss(trainer.model, tok, json.loads((work / "eval.json").read_text()),
                                         a.max_length)}


# --- driver --------------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return platform.processor() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--gradient-checkpointing", action="store_true", help="on for both sides (default off for both)")
    p.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    p.add_argument("--eval-rows", type=int, default=48)
    p.add_argument("--order", default="ours,trl", help="which side runs first (alternates with --repeat)")
    p.add_argument("--repeat", type=int, default=1, help="runs per side; the fastest of each is compared")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--trl-configs", default=",".join(TRL_CONFIGS),
                   help=f"TRL configurations to run, comma-separated from {', '.join(TRL_CONFIGS)}")
    p.add_argument("--ours-configs", default="default",
                   help=f"Sprout configurations to run, comma-separated from {', '.join(OURS_CONFIGS)}")
    p.add_argument("--config", default="default", help=argparse.SUPPRESS)  # child process
    p.add_argument("--side", choices=["ours", "trl"], help=argparse.SUPPRESS)  # child process
    p.add_argument("--work", help=argparse.SUPPRESS)
    a = p.parse_args()

    if a.side:  # child: run one side, print its JSON on the last line
        if a.side == "trl":
            a.trl_config = a.config
        result = (run_ours if a.side == "ours" else run_trl)(a, Path(a.work))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    work = Path(tempfile.mkdtemp(prefix="sprout-bench-"))
    write_data(work, a.steps * a.batch_size, a.eval_rows)  # one epoch: every row seen once
    if "ours" not in a.order.split(","):
        p.error("--order must name ours: every figure is a ratio to it")
    configs = {"ours": a.ours_configs.split(","), "trl": a.trl_configs.split(",")}
    for kind, known in (("ours", OURS_CONFIGS), ("trl", TRL_CONFIGS)):
        unknown = [c for c in configs[kind] if c not in known]
        if unknown:
            p.error(f"--{kind}-configs: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    # a side is "ours:<config>" or "trl:<config>"; the sides alternate order from one repeat to the next
    sides = [f"{side}:{c}" for side in a.order.split(",") for c in configs[side]]
    runs = {side: [] for side in sides}
    for round_ in range(a.repeat):
        for side in sides if round_ % 2 == 0 else sides[::-1]:  # alternate who goes first
            kind, _, config = side.partition(":")
            cmd = [sys.executable, __file__, "--side", kind, "--work", str(work), "--config", config] + sys.argv[1:]
            t0, loads = time.time(), []
            with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
                proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
                while proc.poll() is None:  # sample the machine's load while this side runs
                    loads.append(os.getloadavg()[0])
                    time.sleep(5)
                out.seek(0), err.seek(0)
                stdout, stderr = out.read(), err.read()
            if proc.returncode != 0:
                print(stdout[-3000:], stderr[-5000:], file=sys.stderr)
                return 1
            line = next(ln for ln in reversed(stdout.splitlines()) if ln.startswith("RESULT "))
            r = {**json.loads(line[7:]), "process_seconds": round(time.time() - t0, 1),
                 "mean_load_average": round(sum(loads) / len(loads), 2)}
            runs[side].append(r)
            if a.json:  # as it goes: a run cut short by a time limit keeps the sides it finished
                Path(a.json + ".partial").write_text(json.dumps(runs, indent=2))
            print(f"{side}: {r['supervised_tokens_per_s']:.1f} supervised tokens/s, {r['process_seconds']} s, "
                  f"load {r['mean_load_average']}", file=sys.stderr, flush=True)
    # Best of the repeats, as timeit does: other work on the machine only ever slows a run down.
    results = {side: max(rs, key=lambda r: r["supervised_tokens_per_s"]) for side, rs in runs.items()}

    for r in results.values():
        r["last5_train_loss"] = sum(r["losses"][-5:]) / len(r["losses"][-5:])
        r["supervised_tokens_per_cpu_s"] = r["supervised_tokens"] / r["cpu_seconds"]
        r["steps"] = len(r["losses"])
    fastest = lambda kind: max((s for s in results if s.startswith(kind)),  # noqa: E731
                               key=lambda s: results[s]["supervised_tokens_per_s"])
    best, ours_best = fastest("trl:"), fastest("ours:")
    rows = [("tokens/s (all)", "tokens_per_s", "{:.0f}"),
            ("tokens/s (supervised)", "supervised_tokens_per_s", "{:.0f}"),
            ("supervised tokens per CPU-second", "supervised_tokens_per_cpu_s", "{:.1f}"),
            ("train loop seconds", "train_seconds", "{:.1f}"), ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
            ("optimizer steps", "steps", "{:.0f}"),
            ("train loss, mean of last 5 steps", "last5_train_loss", "{:.4f}"),
            ("held-out loss after training", "heldout_loss", "{:.4f}")]
    gpu = "peak_gpu_mb" in results[ours_best]
    mem_key, mem_label = ("peak_gpu_mb", "peak GPU memory") if gpu else ("peak_rss_mb", "peak RSS")
    if gpu:
        for r in results.values():
            r["steady_mfu"] = r["steady_tokens_per_s"] * 4 * r["matmul_params"] / PEAK_BF16
        rows[4:4] = [(f"steady tokens/s (all, after step {WARMUP_STEPS})", "steady_tokens_per_s", "{:.0f}"),
                     (f"steady tokens/s (supervised)", "steady_supervised_tokens_per_s", "{:.0f}"),
                     ("peak GPU memory MB", "peak_gpu_mb", "{:.0f}"),
                     ("MFU (tokens/s x 4N / 989 TFLOP/s)", "mfu", "{:.3f}"), ("steady MFU", "steady_mfu", "{:.3f}")]
        print(f"\nGPU: {results[ours_best]['gpu']}; matmul weights N = {results[ours_best]['matmul_params'] / 1e9:.3f}B")
    print(f"\nmachine: {os.cpu_count()} cores, {cpu_name()}; torch threads default; model "
          f"{a.model or 'SmolLM2-135M-Instruct (embedded)'}; mean 1-min load average while each side ran: "
          + ", ".join(f"{s} {r['mean_load_average']}" for s, r in results.items()) + " (2.0 = both cores busy)")
    if a.repeat > 1:
        print(f"best of {a.repeat} runs per side; supervised tokens/s of every run: "
              + "; ".join(f"{side} " + ", ".join(f"{r['supervised_tokens_per_s']:.0f}" for r in rs)
                          for side, rs in runs.items()))
    print(f"job: {a.steps} steps x batch {a.batch_size}, max_length {a.max_length}, LoRA r={a.lora_r} "
          f"alpha={2 * a.lora_r} on q,k,v,o,gate,up,down, lr {a.lr} linear, {'bf16' if gpu else 'fp32'}, "
          f"gradient checkpointing {'on' if a.gradient_checkpointing else 'off'} (both)\n")
    names = {s: ("Sprout " if s.startswith("ours:") else "TRL ") + s.split(":")[1] for s in results}
    print(f"{'':34}" + "".join(f"{names[s]:>20}" for s in results) + f"{'best Sprout/TRL':>17}")
    for label, key, fmt in rows:
        print(f"{label:34}" + "".join(f"{fmt.format(r[key]):>20}" for r in results.values())
              + f"{results[ours_best][key] / results[best][key]:>16.3f}x")
    print(f"\nfastest by supervised tokens/s: TRL {best.split(':')[1]}, Sprout {ours_best.split(':')[1]}")
    for mine in (s for s in results if s.startswith("ours:")):
        ours = results[mine]
        for label, side in (("best TRL", best), ("TRL default", "trl:default")):
            if side not in results:
                continue
            ref = results[side]
            speed = ours["supervised_tokens_per_s"] / ref["supervised_tokens_per_s"]
            mem = ours[mem_key] / ref[mem_key]
            loss = abs(ours["heldout_loss"] / ref["heldout_loss"] - 1)
            # a held-out loss after another number of optimizer steps (packing) says nothing
            loss_text = (f"{loss * 100:.2f}% {'PASS' if loss <= 0.02 else 'FAIL'}" if ours["steps"] == ref["steps"]
                         else f"not comparable ({ours['steps']} vs {ref['steps']} steps)")
            print(f"{names[mine]} vs {label}: supervised tokens/s >= 1.5x: {speed:.2f}x "
                  f"{'PASS' if speed >= 1.5 else 'FAIL'}; {mem_label} <= it: {mem:.2f}x {'PASS' if mem <= 1 else 'FAIL'}; "
                  f"held-out loss within 2%: {loss_text}")
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "cpu": cpu_name(), "best": results, "runs": runs},
                                           indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
