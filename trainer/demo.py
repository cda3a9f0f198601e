"""`sprout demo`: the whole job on one machine, each stage through its public entry point.

    seeds -> sprout generate (vLLM teacher) -> data.jsonl -> sprout train (LoRA) -> adapter
          -> sprout eval (base vs student on held-out items) -> sprout report (one HTML file)

With `--dpo`, a third stage after SFT: the run's scored candidates become preference pairs
(`sprout export --format preference`: the selected answer against a failed or lower-scored one),
`sprout train --method dpo` continues from the SFT adapter (which is also DPO's reference), and a
second eval answers the same held-out prompts with the DPO adapter, so base / SFT / SFT+DPO pass
rates sit side by side with a paired interval for DPO against SFT.

The path is the one that gets usable data out of a weak teacher: every instruction answered in
chat form N times, most of them with verifiable constraints appended, only answers that pass
every check kept (best-of-N rejection sampling). The headline is what a program can check: the
student's instruction-following pass rate on held-out verifiable prompts against its base's,
with a paired 95% interval -- not a judge's win rate (a 135M judge is not informative, and the
eval says so).

The stages talk only through files in OUT/ (the dataset file is the contract), so rerunning the
demo resumes: a finished stage is skipped, generation continues where it stopped. `--fresh`
starts over. Defaults fit a 2-core CPU with the embedded 135M model; flags scale it up on a GPU
machine (a bigger teacher and student, more instructions and steps).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from generator.config import setting

# (full, --quick) sizes. --quick is a smoke run of the whole path (CI runs it; ~10 minutes on 2
# cores, most of it the teacher): its numbers are too few to mean anything, and it says so.
SIZES = {
    "num_instructions": (200, 8),
    "responses": (6, 4),
    "epochs": (3, 1),
    "max_steps": (None, 8),  # full: whole epochs
    "eval_limit": (40, 6),  # reference-answer items (loss, ROUGE-L, judge)
    "verifiable_limit": (None, 24),  # held-out verifiable prompts; full: all of them
    "max_length": (512, 256),
    "answer_tokens": (256, 128),
    "dpo_epochs": (2, 2),  # --dpo only; quick: 2 epochs of ~7 pairs = a few steps
}
DPO_LR = 5e-5  # LoRA DPO: ten times below SFT's (DPO moves a policy that is already good; TRL's LoRA examples use 5e-6..5e-5)
CONSTRAINT_SHARE = 0.8  # most demo instructions carry a checkable constraint: the headline measures them


def _sized(name: str, help: str, unlimited: str = "all"):
    """A size whose default depends on --quick: None in the config, SIZES in --help (so the two
    cannot drift); `unlimited` names a full size of None."""
    full, quick = SIZES[name]
    return setting(None, help, shown=f"{unlimited if full is None else full}; --quick {quick}")


EMBEDDED = "the embedded SmolLM2-135M-Instruct"


@dataclass
class DemoConfig:
    out: str = setting("runs/demo", "folder for every artifact")
    quick: bool = setting(False, "a smoke run of the whole path (~10 min on 2 CPU cores; too small to measure a "
                          "gain); CI runs this")
    fresh: bool = setting(False, "delete OUT first instead of resuming")
    seeds: str | None = setting(None, "seed tasks", shown="shipped seeds")
    # A 135M teacher copies the examples of a seed list (Self-Instruct's bootstrap) and writes
    # nonsense tasks inside Alpaca's batches, but asked for a user turn alone (Magpie) it writes
    # natural requests; the seeds then fill the novelty pool. With a bigger teacher pass
    # --mode self-instruct or alpaca to expand the seeds themselves.
    mode: str = setting("magpie", "how instructions are made; magpie is the one a 135M teacher gets natural "
                        "requests from", choices=("magpie", "alpaca", "self-instruct"))
    teacher_url: str | None = setting(None, "use a running OpenAI-compatible teacher instead of serving one")
    teacher_model: str | None = setting(None, "model to serve as teacher", shown=EMBEDDED)
    student: str | None = setting(None, "student base model", shown=EMBEDDED)
    num_instructions: int | None = _sized("num_instructions", "instructions to generate")
    responses: int | None = _sized("responses", "samples per instruction for best-of-N")
    epochs: int | None = _sized("epochs", "training epochs")
    max_steps: int | None = _sized("max_steps", "training steps", unlimited="whole epochs")
    eval_limit: int | None = _sized("eval_limit", "reference-answer eval items")
    verifiable_limit: int | None = _sized("verifiable_limit", "held-out verifiable prompts")
    max_length: int | None = _sized("max_length", "training sequence length")
    answer_tokens: int | None = _sized("answer_tokens", "max tokens of each eval answer")
    # secondary, and flagged when uninformative; no default in --help: "skip ... (default: on)" reads backwards
    judge: bool = setting(True, "skip the pairwise judge", flag="--no-judge", shown="")
    dpo: bool = setting(False, "add DPO after SFT: preference pairs from the run's scored candidates, LoRA DPO "
                        "from the SFT adapter, and base / SFT / SFT+DPO pass rates side by side")
    dpo_epochs: int | None = _sized("dpo_epochs", "DPO epochs over the preference pairs (with --dpo)")
    # for the vLLM servers the demo starts (teacher, then eval), as sprout serve's
    max_model_len: int | None = setting(None, "context length of the vLLM servers the demo starts",
                                        shown="the model's own")
    vllm_args: list[str] = setting(help="argument for the vLLM servers the demo starts (teacher and eval), e.g. "
                                   "--vllm-arg=--gpu-memory-utilization=0.5 (repeatable)", factory=list,
                                   flag="--vllm-arg", metavar="ARG")

    def size(self, name: str) -> int | None:
        value = getattr(self, name)
        return value if value is not None else SIZES[name][1 if self.quick else 0]


def _stage(name: str) -> float:
    print(f"\n== {name} ==", file=sys.stderr, flush=True)
    return time.monotonic()


MARKER = ".sprout-demo"  # written in an OUT the demo created: only such a folder may be deleted


def prepare_out(out: Path, fresh: bool) -> None:
    """Create OUT (marked as the demo's); with `fresh`, delete it first -- but only a folder the
    demo made or an empty one: `--out ~ --fresh` must not wipe a home folder."""
    from generator.errors import UserError

    if fresh and (out.exists() or out.is_symlink()):
        if out.is_symlink() or not out.is_dir():
            raise UserError(f"--fresh: {out} is not a folder the demo made; refusing to delete it")
        if not (out / MARKER).is_file() and any(out.iterdir()):
            raise UserError(f"--fresh: {out} was not made by sprout demo (no {MARKER} in it); refusing to "
                            "delete it -- remove it yourself or choose another --out")
        shutil.rmtree(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("made by sprout demo; sprout demo --fresh may delete this folder\n")
    out.mkdir(parents=True, exist_ok=True)


def demo(cfg: DemoConfig) -> dict:
    from generator.gen_config import GenerateConfig
    from generator.generate import generate
    from trainer.config import TrainConfig
    from trainer.evaluate import EvalConfig, evaluate
    from trainer.train import train

    out = Path(cfg.out)
    prepare_out(out, cfg.fresh)
    times = {}
    n_stages = 6 if cfg.dpo else 4

    t = _stage(f"1/{n_stages} generate {cfg.size('num_instructions')} instructions ({cfg.mode})")
    from generator.resources import data_dir

    held_out = data_dir("seeds") / "verifiable_eval.jsonl"
    gen = GenerateConfig(out=str(out / "data"), seeds=cfg.seeds, mode=cfg.mode,
                         num_instructions=cfg.size("num_instructions"), teacher_url=cfg.teacher_url,
                         model=cfg.teacher_model, teacher_model=None, concurrency=64,
                         responses=cfg.size("responses"), constraints=CONSTRAINT_SHARE,
                         decontaminate=[str(held_out)] if held_out.is_file() else [],
                         max_model_len=cfg.max_model_len, vllm_args=list(cfg.vllm_args))
    gen_stats = generate(gen)
    times["generate_s"] = round(time.monotonic() - t, 1)

    steps = cfg.size("max_steps")
    length = f"{steps} steps" if steps else f"{cfg.size('epochs')} epochs"
    t = _stage(f"2/{n_stages} train a LoRA adapter ({length})")
    train_dir = out / "train"
    if (train_dir / "summary.json").is_file() and (train_dir / "adapter" / "adapter_config.json").is_file():
        print(f"{train_dir} already trained; skipping (--fresh to redo)", file=sys.stderr)
        train_summary = json.loads((train_dir / "summary.json").read_text())
        trained_now = False
    else:
        trained_now = True
        train_summary = train(TrainConfig(data=str(out / "data"), out=str(train_dir), model=cfg.student,
                                          max_steps=cfg.size("max_steps"), epochs=cfg.size("epochs"),
                                          max_length=cfg.size("max_length"),
                                          batch_size=4, eval_fraction=0.1, eval_every=max((cfg.size("max_steps") or 0) // 2, 0),
                                          save_every=0, lr=5e-4, overwrite=True))
    times["train_s"] = round(time.monotonic() - t, 1)

    dpo = None
    if cfg.dpo:
        t = _stage(f"3/{n_stages} DPO on the run's preference pairs, from the SFT adapter")
        dpo = _dpo_stage(cfg, out, train_dir)
        times["dpo_s"] = round(time.monotonic() - t, 1)

    t = _stage(f"{3 + bool(cfg.dpo)}/{n_stages} evaluate base vs student on {cfg.size('eval_limit')} "
               "held-out items")
    if (out / "eval" / "summary.json").is_file() and not trained_now:
        print(f"{out / 'eval'} already evaluated; skipping (--fresh to redo)", file=sys.stderr)
        eval_summary = json.loads((out / "eval" / "summary.json").read_text())
    else:
        eval_summary = evaluate(EvalConfig(out=str(out / "eval"), model=cfg.student,
                                           adapter=str(train_dir / "adapter"), limit=cfg.size("eval_limit"),
                                           verifiable_limit=cfg.size("verifiable_limit"), judge=cfg.judge,
                                           max_tokens=cfg.size("answer_tokens"), max_model_len=cfg.max_model_len,
                                           vllm_args=list(cfg.vllm_args)))
    times["eval_s"] = round(time.monotonic() - t, 1)

    if dpo is not None and dpo["summary"] is not None:
        t = _stage(f"{n_stages - 1}/{n_stages} evaluate base vs SFT+DPO on the same held-out prompts")
        eval_dpo = out / "eval-dpo"
        if (eval_dpo / "summary.json").is_file() and not dpo["trained_now"]:
            print(f"{eval_dpo} already evaluated; skipping (--fresh to redo)", file=sys.stderr)
        else:
            evaluate(EvalConfig(out=str(eval_dpo), model=cfg.student, adapter=str(out / "dpo" / "adapter"),
                                limit=cfg.size("eval_limit"), verifiable_limit=cfg.size("verifiable_limit"),
                                judge=False, max_tokens=cfg.size("answer_tokens"), max_model_len=cfg.max_model_len,
                                vllm_args=list(cfg.vllm_args)))
        dpo["verifiable"] = three_way(out / "eval" / "verifiable.jsonl", eval_dpo / "verifiable.jsonl")
        times["eval_dpo_s"] = round(time.monotonic() - t, 1)

    t = _stage(f"{n_stages}/{n_stages} report")
    from trainer.report import write_report

    report = write_report(str(out / "data"), str(train_dir), str(out / "eval"), str(out / "report.html"))
    times["report_s"] = round(time.monotonic() - t, 1)

    v = eval_summary.get("verifiable") or {}
    headline = {
        "kept_instructions": gen_stats.get("kept_instructions"), "records": gen_stats.get("records"),
        "teacher_completion_tokens": gen_stats.get("completion_tokens"),
        "teacher_constraint_pass_rate": (gen_stats.get("responses") or {}).get("constraint_pass_rate"),
        "train_final_loss": train_summary.get("final_loss"), "train_eval_loss": train_summary.get("eval_loss"),
        "verifiable_items": v.get("items"), "verifiable_base": v.get("base"), "verifiable_student": v.get("student"),
        "verifiable_diff": v.get("diff"),
        "base_reference_loss": eval_summary.get("base_reference_loss"),
        "student_reference_loss": eval_summary.get("student_reference_loss"),
        "judge_informative": eval_summary.get("judge_informative"),
        "win_rate": eval_summary.get("win_rate"), "win_rate_ci95": eval_summary.get("win_rate_ci95"),
        **times,
    }
    if dpo is not None:
        headline["dpo"] = {"pairs": dpo["pairs"], "skipped": dpo["skipped"], "note": dpo["note"],
                           "final_loss": (dpo["summary"] or {}).get("final_loss"),
                           "train_reward_accuracy": (dpo["summary"] or {}).get("final_reward_accuracy"),
                           "eval_reward_accuracy": _last_eval(out / "dpo", "eval_reward_accuracy"),
                           "verifiable": dpo.get("verifiable")}
    (out / "demo_summary.json").write_text(json.dumps(headline, indent=2))
    print(f"""
Sprout demo finished in {sum(times.values()):.0f} s
  dataset      {out / 'data' / 'data.jsonl'}  ({headline['kept_instructions']} instructions, {headline['records']} records)
  rejections   {out / 'data' / 'rejected.jsonl'}   stats {out / 'data' / 'stats.json'}
  adapter      {train_dir / 'adapter'}  (serve it: sprout serve --lora student={train_dir / 'adapter'})
  training     {train_dir / 'metrics.jsonl'}, {train_dir / 'loss.png'}
  evaluation   {out / 'eval' / 'summary.json'}, {out / 'eval' / 'report.md'}, {out / 'eval' / 'results.jsonl'}
  report       {report}
  {_headline_line(headline)}{_dpo_lines(headline.get("dpo"))}
  reference loss on held-out answers: base {headline['base_reference_loss']} -> student {headline['student_reference_loss']}
  {_judge_line(headline)}""")
    return headline


def _headline_line(h: dict) -> str:
    if not h.get("verifiable_diff"):
        return "instruction following: not measured (no verifiable eval set)"
    b, s, d = h["verifiable_base"], h["verifiable_student"], h["verifiable_diff"]
    parts = [f"{name}-level {b[key]:.3f} -> {s[key]:.3f} ({d[key]['mean']:+.3f}, 95% CI "
             f"{d[key]['ci95'][0]:+.3f}..{d[key]['ci95'][1]:+.3f})"
             for name, key in (("constraint", "constraint_strict"), ("prompt", "prompt_strict"))]
    line = f"HEADLINE instruction following on {h['verifiable_items']} held-out verifiable prompts, base -> student: " \
        + "; ".join(parts)
    if (h.get("verifiable_items") or 0) < 100:
        line += (f"\n  ({h['verifiable_items']} prompts and a tiny training set: a smoke run, not a measurement -- "
                 "the interval shows how little it can tell; run without --quick to measure the gain)")
    return line


def _dpo_stage(cfg: DemoConfig, out: Path, train_dir: Path) -> dict:
    """Preference pairs from the run's candidates, then LoRA DPO from the SFT adapter. A run with no
    pair (every instruction had one answer, or all its answers scored alike) skips DPO and says why."""
    from generator.errors import UserError
    from generator.export import export_preference
    from trainer.config import TrainConfig
    from trainer.train import train

    pairs_path, dpo_dir = out / "preference.jsonl", out / "dpo"
    try:
        n, skipped = export_preference(str(out / "data"), "preference", str(pairs_path))
    except UserError as e:
        print(f"DPO skipped: {e}", file=sys.stderr)
        return {"pairs": 0, "skipped": None, "note": str(e), "summary": None, "trained_now": False}
    print(f"{n} preference pairs -> {pairs_path} (records without a pair: {skipped or 'none'})", file=sys.stderr)
    if (dpo_dir / "summary.json").is_file() and (dpo_dir / "adapter" / "adapter_config.json").is_file():
        print(f"{dpo_dir} already trained; skipping (--fresh to redo)", file=sys.stderr)
        return {"pairs": n, "skipped": skipped, "note": None, "trained_now": False,
                "summary": json.loads((dpo_dir / "summary.json").read_text())}
    summary = train(TrainConfig(data=str(pairs_path), out=str(dpo_dir), model=cfg.student, method="dpo",
                                init_adapter=str(train_dir / "adapter"), epochs=cfg.size("dpo_epochs"),
                                max_length=cfg.size("max_length"), batch_size=4, eval_fraction=0.1, eval_every=0,
                                save_every=0, lr=DPO_LR, overwrite=True))
    return {"pairs": n, "skipped": skipped, "note": None, "summary": summary, "trained_now": True}


def _last_eval(train_dir: Path, key: str):
    from trainer.metrics import read_metrics

    path = train_dir / "metrics.jsonl"
    values = [r[key] for r in read_metrics(path) if key in r] if path.is_file() else []
    return values[-1] if values else None


def three_way(sft_rows: Path, dpo_rows: Path) -> dict:
    """Base / SFT / SFT+DPO pass rates on the prompts both evals answered, and DPO minus SFT with a
    paired interval. The base answers are the SFT eval's (both evals answer greedily; the demo's
    resumed quick run gave the same 24 base answers in both)."""
    from generator.rows import read_rows
    from trainer.verifiable_eval import summarize_verifiable

    dpo = {r["id"]: r for _, r in read_rows(dpo_rows)}
    rows = []
    for _, r in read_rows(sft_rows):
        d = dpo.get(r["id"])
        if d is None:
            continue
        rows.append({**r, **{k: {"base": r[k]["base"], "sft": r[k]["student"], "dpo": d[k]["student"]}
                             for k in ("answers", "strict", "loose")}})
    return summarize_verifiable(rows, compare=("sft", "dpo")) if rows else {}


def _dpo_lines(d: dict | None) -> str:
    if d is None:
        return ""
    if not d.get("pairs") or not d.get("verifiable"):
        return f"\n  DPO: not run ({d.get('note') or 'no result'})"
    v = d["verifiable"]
    rates = ", ".join(f"{name}-level base {v['base'][key]:.3f} / SFT {v['sft'][key]:.3f} / SFT+DPO {v['dpo'][key]:.3f} "
                      f"(DPO-SFT {v['diff'][key]['mean']:+.3f}, 95% CI {v['diff'][key]['ci95'][0]:+.3f}.."
                      f"{v['diff'][key]['ci95'][1]:+.3f})"
                      for name, key in (("constraint", "constraint_strict"), ("prompt", "prompt_strict")))
    acc = d.get("eval_reward_accuracy")
    return (f"\n  DPO on {d['pairs']} preference pairs (held-out reward accuracy "
            f"{'n/a' if acc is None else f'{acc:.2f}'}): {rates}")


def _judge_line(h: dict) -> str:
    if h.get("win_rate") is None:
        return "pairwise judge: not run"
    if h.get("judge_informative") is False:
        return "pairwise judge: NOT INFORMATIVE (it follows the position, not the answers; see the eval report)"
    return f"judge win rate of student vs base: {h['win_rate']} (95% CI {h['win_rate_ci95']})"


def add_demo_args(p) -> None:
    from generator.config import add_flags

    add_flags(p, DemoConfig)
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from generator.config import load_config

    cfg = load_config(DemoConfig, args.config, {k: v for k, v in vars(args).items() if k not in ("config", "func")})
    demo(cfg)
    return 0
