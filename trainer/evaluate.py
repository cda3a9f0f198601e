"""`sprout eval`: base model vs base + LoRA adapter on a held-out eval set.

1. One vLLM server (generator.server, the one place that starts vLLM) serves the base model with
   the adapter as model `student`; every instruction is answered by both, greedily.
2. Scores: loss on the reference answers (teacher-forced, computed here with transformers and
   the trainer's own formatting, so it is the same loss training minimised), ROUGE-L against the
   reference, and a pairwise judge in both orders with a bootstrap 95% interval (trainer.judge).
3. Writes OUT/results.jsonl (per item), OUT/summary.json and OUT/report.md.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from generator.errors import UserError
from generator.seeds import parse_task, read_rows


@dataclass
class EvalConfig:
    eval_set: str | None = None  # default: the shipped seeds/eval_set.jsonl
    out: str = ""
    model: str | None = None  # base model; None = the embedded SmolLM2-135M-Instruct
    adapter: str | None = None  # PEFT adapter folder (sprout train's OUT/adapter)
    judge_url: str | None = None  # default: the base model on the eval server judges
    judge_model: str | None = None
    judge_template: str | None = None
    api_key_env: str | None = None
    limit: int | None = None  # first N items only
    max_tokens: int = 256
    concurrency: int = 64
    train_data: str | None = None  # warn when it overlaps the eval set (default: the adapter's training data)
    loss: bool = True


def load_eval_set(path: str | Path, limit: int | None = None) -> list[dict]:
    """Items {instruction, input, reference, prompt messages} from any seed format or messages rows."""
    rows, unit = read_rows(path)
    items = []
    for n, row in rows:
        where = f"{path} {unit} {n}"
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            msgs = row["messages"]
            if not msgs or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
                raise UserError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
            ref = msgs[-1]["content"] if msgs[-1]["role"] == "assistant" else ""
            prompt = msgs[:-1] if ref else msgs
            users = [m["content"] for m in prompt if m["role"] == "user"]
            if not users:
                raise UserError(f"{where}: no user turn in 'messages'")
            items.append({"instruction": users[-1], "input": "", "reference": ref, "messages": prompt})
        elif isinstance(row, dict) and "instruction" in row:
            task = parse_task(row, where, default_id=str(n))
            inst = task.instances[0] if task.instances else {"input": "", "output": ""}
            user = task.instruction + (f"\n\n{inst['input']}" if inst["input"] else "")
            items.append({"instruction": task.instruction, "input": inst["input"], "reference": inst["output"],
                          "messages": [{"role": "user", "content": user}]})
        else:
            raise UserError(f"{where}: unknown eval set format; rows need 'instruction' (Alpaca / Self-Instruct) "
                            "or 'messages' (chat)")
    return items[:limit] if limit else items


def check_adapter(adapter: str, base_path: str) -> Path:
    """The adapter folder, after checking that its LoRA shapes fit the base model."""
    folder = Path(adapter).expanduser()
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"--adapter {adapter}: no adapter_config.json there; pass sprout train's OUT/adapter folder")
    from safetensors import safe_open

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise UserError(f"--adapter {adapter}: adapter_model.safetensors is missing")
    base_cfg = json.loads((Path(base_path) / "config.json").read_text()) if (Path(base_path) / "config.json").is_file() else {}
    hidden, layers = base_cfg.get("hidden_size"), base_cfg.get("num_hidden_layers")
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():
            parts = key.split(".")
            if "layers" in parts and layers is not None:
                idx = parts[parts.index("layers") + 1]
                if idx.isdigit() and int(idx) >= layers:
                    raise UserError(f"--adapter {adapter}: made for a deeper model (layer {idx}) than the base "
                                    f"({layers} layers); pass the base model it was trained on with --model")
            if hidden and key.endswith(("q_proj.lora_A.weight", "gate_proj.lora_A.weight")):
                if f.get_slice(key).get_shape()[1] != hidden:
                    raise UserError(f"--adapter {adapter}: made for another base model (input width "
                                    f"{f.get_slice(key).get_shape()[1]}, base hidden size {hidden}); "
                                    "pass its base model with --model")
    return folder.resolve()


def reference_losses(model_path: str, adapter: Path | None, items: list[dict]) -> list[dict]:
    """Mean token loss of each reference answer under base (and student): [{base, student}]."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.batching import collate
    from trainer.data import Example
    from trainer.format import Formatter
    from trainer.model import CausalLMLoss

    tok = AutoTokenizer.from_pretrained(model_path)
    fmt = Formatter(tok)
    scored = [i for i, it in enumerate(items) if it["reference"].strip()]
    enc = [fmt.encode(Example(items[i]["messages"] + [{"role": "assistant", "content": items[i]["reference"]}],
                              where=str(i))) for i in scored]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    out = [{} for _ in items]

    def run(m, name):
        loss_fn = CausalLMLoss(m)
        with torch.no_grad():
            for i, e in zip(scored, enc):
                total, n = loss_fn(**collate([e], tok.pad_token_id or 0))
                out[i][name] = round(float(total) / max(int(n), 1), 4)

    run(model, "base")
    if adapter is not None:
        from peft import PeftModel

        run(PeftModel.from_pretrained(model, str(adapter)).eval(), "student")
    return out


async def _answer_all(client, items: list[dict], models: list[str], max_tokens: int) -> dict[str, list[str]]:
    """Greedy answers of each model to every item, all requests in flight together."""
    async def one(model, it):
        out = await client.chat(it["messages"], model=model, max_tokens=max_tokens, temperature=0.0)
        return out.texts[0].strip()

    answers = await asyncio.gather(*[one(m, it) for m in models for it in items])
    return {m: answers[k * len(items):(k + 1) * len(items)] for k, m in enumerate(models)}


def overlap_warning(items: list[dict], train_data: str | None) -> str | None:
    """A warning when training instructions overlap the eval set (13-gram or ROUGE-L > 0.7)."""
    if not train_data or not Path(train_data).exists():
        return None
    from generator.decontam import Decontaminator
    from trainer.data import load_examples

    try:
        examples = load_examples(train_data)
    except UserError:
        return None
    guard = Decontaminator([it["instruction"] for it in items])
    hits = sum(1 for ex in examples if guard.check(next((m["content"] for m in ex.messages if m["role"] == "user"), "")))
    if hits:
        return (f"warning: {hits} of {len(examples)} training examples in {train_data} overlap the eval set "
                "(13-gram or ROUGE-L > 0.7); scores may be inflated -- regenerate with --decontaminate")
    return None


async def _evaluate(cfg: EvalConfig, url: str, base_name: str, items: list[dict], has_student: bool) -> tuple:
    from generator.client import ClientConfig, TeacherClient, api_key_from_env
    from trainer.judge import judge_pairs, judge_template

    models = [base_name] + (["student"] if has_student else [])
    async with TeacherClient(url, model=base_name, cfg=ClientConfig(concurrency=cfg.concurrency)) as client:
        answers = await _answer_all(client, items, models, cfg.max_tokens)
        judged = None
        if has_student:
            for k, it in enumerate(items):
                it["base"], it["student"] = answers[base_name][k], answers["student"][k]
            tmpl = judge_template(cfg.judge_template)
            if cfg.judge_url:
                async with TeacherClient(cfg.judge_url, model=cfg.judge_model, api_key=api_key_from_env(cfg.api_key_env, cfg.judge_url),
                                         cfg=ClientConfig(concurrency=cfg.concurrency)) as judge:
                    judged = await judge_pairs(judge, tmpl, items, structured=False)
            else:  # the base model on our own vLLM server: JSON-schema verdicts cannot be unreadable
                judged = await judge_pairs(client, tmpl, items, structured=True)
    return answers, judged


def evaluate(cfg: EvalConfig) -> dict:
    from generator.models import resolve_model
    from generator.novelty import rouge_l
    from generator.resources import data_dir
    from generator.redact import redact_url
    from generator.server import ServeConfig, VLLMServer, free_port
    from trainer.judge import summarize

    if not cfg.out:
        raise UserError("--out: name the folder for results, e.g. --out runs/eval1")
    items = load_eval_set(cfg.eval_set or data_dir("seeds") / "eval_set.jsonl", cfg.limit)
    base_path = resolve_model(cfg.model)
    adapter = check_adapter(cfg.adapter, base_path) if cfg.adapter else None
    train_data = cfg.train_data
    if train_data is None and adapter is not None:
        import yaml

        tc = adapter.parent / "train_config.yaml"
        train_data = (yaml.safe_load(tc.read_text()) or {}).get("data") if tc.is_file() else None
    warning = overlap_warning(items, train_data)
    if warning:
        print(warning, file=sys.stderr)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    serve = ServeConfig(model=cfg.model, port=free_port(), lora=[f"student={adapter}"] if adapter else [])
    print(f"answering {len(items)} items with base{' and student' if adapter else ''} (vLLM)...", file=sys.stderr)
    with VLLMServer(serve) as srv:
        answers, judged = asyncio.run(_evaluate(cfg, srv.base_url, srv.model_name, items, adapter is not None))
    losses = reference_losses(base_path, adapter, items) if cfg.loss else [{} for _ in items]
    models = list(answers)
    results = []
    for k, it in enumerate(items):
        row = {"instruction": it["instruction"], "input": it["input"], "reference": it["reference"],
               "answers": {("base" if m == models[0] else m): answers[m][k] for m in models},
               "loss": losses[k]}
        if it["reference"].strip():
            row["rouge_l"] = {name: round(rouge_l(ans, it["reference"]), 4) for name, ans in row["answers"].items()}
        if judged:
            row["judge"] = judged[k]
        results.append(row)
    summary = {"items": len(items), "model": base_path, "adapter": str(adapter) if adapter else None,
               "eval_set": str(cfg.eval_set or "seeds/eval_set.jsonl"), "overlap_warning": warning}
    for name in ("base", "student"):
        ls = [r["loss"][name] for r in results if name in r["loss"]]
        rs = [r["rouge_l"][name] for r in results if "rouge_l" in r and name in r["rouge_l"]]
        if ls:
            summary[f"{name}_reference_loss"] = round(statistics.mean(ls), 4)
        if rs:
            summary[f"{name}_rouge_l"] = round(statistics.mean(rs), 4)
    if judged:
        summary.update(summarize(judged))
        summary["judge"] = cfg.judge_model or (redact_url(cfg.judge_url) if cfg.judge_url else None) \
            or f"{srv.model_name} (base model, same server)"
    with open(out / "results.jsonl", "w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "report.md").write_text(report_md(summary, results))
    (out / "eval_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return summary


def report_md(summary: dict, results: list[dict], examples: int = 5) -> str:
    lines = ["# Sprout evaluation", "", f"- items: {summary['items']}", f"- base model: `{summary['model']}`",
             f"- adapter: `{summary['adapter']}`"]
    for key in ("base_reference_loss", "student_reference_loss", "base_rouge_l", "student_rouge_l"):
        if key in summary:
            lines.append(f"- {key.replace('_', ' ')}: {summary[key]}")
    if summary.get("win_rate") is not None:
        lo, hi = summary["win_rate_ci95"]
        lines += [f"- **student win rate vs base: {summary['win_rate']:.3f}** (95% bootstrap interval {lo:.3f} - "
                  f"{hi:.3f}; {summary['judged_items']} items judged in both orders, {summary['skipped_items']} "
                  f"skipped; judge: {summary['judge']})"]
    if summary.get("overlap_warning"):
        lines.append(f"- {summary['overlap_warning']}")
    lines += ["", "## Examples", ""]
    for r in results[:examples]:
        lines += [f"### {r['instruction'][:120]}", ""]
        if r["input"]:
            lines += [f"Input: {r['input'][:300]}", ""]
        lines += [f"- reference: {r['reference'][:300]}"]
        for name, ans in r["answers"].items():
            lines.append(f"- {name}: {ans[:300]}")
        if "judge" in r:
            lines.append(f"- judge verdicts (student as B, then as A): {r['judge']['verdicts']}")
        lines.append("")
    return "\n".join(lines)


def add_eval_args(p) -> None:
    a = p.add_argument
    a("--eval-set", help="eval items: Alpaca / Self-Instruct / messages rows (default: shipped seeds/eval_set.jsonl)")
    a("--out", help="folder for results.jsonl, summary.json, report.md")
    a("--model", help="base model (default: the embedded SmolLM2-135M-Instruct)")
    a("--adapter", help="LoRA adapter folder from sprout train (OUT/adapter)")
    a("--judge-url", help="OpenAI-compatible judge (default: the base model on the eval server)")
    a("--judge-model")
    a("--judge-template", help="Jinja judge prompt (default: prompts/judge.jinja)")
    a("--api-key-env")
    a("--limit", type=int, help="evaluate the first N items only")
    a("--max-tokens", type=int, help="max tokens per answer (default 256)")
    a("--concurrency", type=int)
    a("--train-data", help="training data to check for overlap with the eval set")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from generator.config import load_config

    cfg = load_config(EvalConfig, args.config, {k: v for k, v in vars(args).items() if k not in ("config", "func")})
    s = evaluate(cfg)
    print(f"wrote {cfg.out}/summary.json, results.jsonl, report.md")
    for key in ("base_reference_loss", "student_reference_loss", "base_rouge_l", "student_rouge_l"):
        if key in s:
            print(f"{key}: {s[key]}")
    if s.get("win_rate") is not None:
        print(f"student win rate vs base: {s['win_rate']:.3f} (95% CI {s['win_rate_ci95'][0]:.3f}-"
              f"{s['win_rate_ci95'][1]:.3f}, {s['judged_items']} items)")
    return 0
