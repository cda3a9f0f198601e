"""Does the embedded model get better at following instructions from data it wrote itself?

SmolLM2-135M-Instruct is teacher and student: `sprout demo`'s path (magpie requests, N sampled
answers each, verifiable constraints on most of them, best-of-N selection of answers that pass
every check), then a LoRA fine-tune, then both models answer the held-out verifiable eval set
(seeds/verifiable_eval.jsonl: constraint phrasings never seen in training, no 13-gram shared with
the training prompts). Prints base vs student at prompt and constraint level with the paired 95%
interval of the difference, and what the run cost (teacher tokens, minutes per stage).

    python benchmarks/self_improvement.py --out runs/selfimp            # the full demo sizes
    python benchmarks/self_improvement.py --out runs/selfimp --num-instructions 150 --responses 8

Resumes like the demo (rerun the same command); record the printed table in RESULTS.md.
"""

from __future__ import annotations

import argparse

from _common import machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/selfimp")
    ap.add_argument("--teacher-url", help="a running teacher (default: start the embedded model)")
    ap.add_argument("--num-instructions", type=int)
    ap.add_argument("--responses", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--verifiable-limit", type=int)
    ap.add_argument("--no-judge", dest="judge", action="store_false")
    args = ap.parse_args()

    from trainer.cli import handle_termination
    from trainer.demo import DemoConfig, demo

    handle_termination()  # SIGTERM / SIGHUP unwind like Ctrl-C: servers stopped, files closed

    h = demo(DemoConfig(out=args.out, teacher_url=args.teacher_url, num_instructions=args.num_instructions,
                        responses=args.responses, epochs=args.epochs, verifiable_limit=args.verifiable_limit,
                        judge=args.judge))
    b, s, d = h["verifiable_base"], h["verifiable_student"], h["verifiable_diff"]
    print(f"\nself-improvement, SmolLM2-135M-Instruct teaching itself ({machine()})")
    print(f"data: {h['kept_instructions']} instructions, {h['records']} records; teacher "
          f"{h['teacher_completion_tokens']} completion tokens; teacher met its constraints in "
          f"{h['teacher_constraint_pass_rate']} of constrained samples")
    print(f"held-out verifiable prompts: {h['verifiable_items']}")
    print(f"{'measure':<20} {'base':>7} {'student':>8} {'diff':>8}  95% CI (paired)")
    for key in ("prompt_strict", "constraint_strict", "prompt_loose", "constraint_loose"):
        lo, hi = d[key]["ci95"]
        print(f"{key:<20} {b[key]:>7.3f} {s[key]:>8.3f} {d[key]['mean']:>+8.3f}  [{lo:+.3f}, {hi:+.3f}]")
    minutes = {k: round(v / 60, 1) for k, v in h.items() if k.endswith("_s")}
    print(f"minutes: {minutes} (total {sum(minutes.values()):.1f})")


if __name__ == "__main__":
    main()
