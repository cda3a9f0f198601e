"""`sprout export` (a run's records as Alpaca JSONL, chat messages, HF datasets or parquet) and
`sprout compare` (two runs side by side: counts, lengths, diversity, overlap)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from generator.errors import UserError

FORMATS = ("alpaca", "messages", "hf", "parquet")


def load_run_records(run: str | Path) -> list[dict]:
    """Records of a run directory (or its data.jsonl); a torn last line is skipped, not fatal."""
    path = Path(run)
    path = path / "data.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{run}: no data.jsonl here; pass a run directory made by sprout generate")
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):  # a run still being written, or a crash: resume repairs it
                continue
            raise UserError(f"{path} line {n}: not valid JSON") from None
        for key in ("instruction", "output"):
            if not isinstance(rec.get(key), str):
                raise UserError(f"{path} line {n}: missing field {key!r}")
        records.append(rec)
    return records


def to_alpaca(rec: dict) -> dict:
    return {"id": rec.get("id", ""), "instruction": rec["instruction"], "input": rec.get("input", ""),
            "output": rec["output"]}


def to_messages(rec: dict) -> dict:
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
    return {"id": rec.get("id", ""), "messages": [{"role": "user", "content": user},
                                                   {"role": "assistant", "content": rec["output"]}]}


def export(run: str, fmt: str, out: str) -> int:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    records = load_run_records(run)
    if not records:
        raise UserError(f"{run}: the run has no records yet")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("alpaca", "messages"):
        conv = to_alpaca if fmt == "alpaca" else to_messages
        tmp = out_path.with_name(out_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(conv(rec), ensure_ascii=False) + "\n")
        tmp.replace(out_path)
    else:
        from datasets import Dataset

        ds = Dataset.from_list([to_alpaca(r) | {"is_classification": bool(r.get("is_classification"))}
                                for r in records])
        if fmt == "hf":
            ds.save_to_disk(str(out_path))
        else:
            ds.to_parquet(str(out_path))
    return len(records)


def add_export_args(p) -> None:
    p.add_argument("run", help="run directory made by sprout generate")
    p.add_argument("--format", default="alpaca", choices=FORMATS)
    p.add_argument("--out", required=True, help="output file (folder for --format hf)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    n = export(args.run, args.format, args.out)
    print(f"wrote {n} records to {args.out} ({args.format})")
    return 0


# -- compare --------------------------------------------------------------------------------------


def run_summary(records: list[dict]) -> dict:
    from generator.novelty import NoveltyPool

    instructions = list(dict.fromkeys(r["instruction"] for r in records))
    words = [len(i.split()) for i in instructions]
    out_words = [len(r["output"].split()) for r in records]
    bigrams = [tuple(i.lower().split()[j:j + 2]) for i in instructions for j in range(max(len(i.split()) - 1, 0))]
    first_words = {i.split()[0].lower() for i in instructions if i.split()}
    pool, nearest = NoveltyPool(threshold=1.0), []
    for text in instructions:  # each instruction's ROUGE-L to its nearest earlier one
        _, similar = pool.check_and_add(text, k=1)
        if similar:
            nearest.append(similar[0][1])
    return {
        "instructions": len(instructions), "records": len(records),
        "with_input": sum(1 for r in records if r.get("input")),
        "classification": sum(1 for r in records if r.get("is_classification")),
        "instruction_words_mean": round(statistics.mean(words), 1) if words else 0,
        "output_words_mean": round(statistics.mean(out_words), 1) if out_words else 0,
        "output_words_median": statistics.median(out_words) if out_words else 0,
        "distinct_first_words": len(first_words),
        "distinct_bigram_ratio": round(len(set(bigrams)) / len(bigrams), 3) if bigrams else 0,
        "nearest_rouge_l_mean": round(statistics.mean(nearest), 3) if nearest else 0,
    }


def compare(run_a: str, run_b: str, threshold: float = 0.7) -> dict:
    from generator.novelty import NoveltyPool

    a, b = load_run_records(run_a), load_run_records(run_b)
    pool = NoveltyPool(threshold=threshold)
    for text in dict.fromkeys(r["instruction"] for r in a):
        pool.add(text)
    b_instr = list(dict.fromkeys(r["instruction"] for r in b))
    near = sum(1 for text in b_instr if not pool.check(text, k=0)[0])
    return {"a": run_summary(a), "b": run_summary(b), "b_near_duplicates_of_a": near, "threshold": threshold}


def add_compare_args(p) -> None:
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--threshold", type=float, default=0.7, help="ROUGE-L above which B's item is A's near-duplicate")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    result = compare(args.run_a, args.run_b, args.threshold)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    a, b = result["a"], result["b"]
    print(f"{'':28} {'A':>10} {'B':>10}")
    for key in a:
        print(f"{key:28} {a[key]:>10} {b[key]:>10}")
    print(f"B instructions that are near-duplicates of A's (ROUGE-L > {args.threshold}): "
          f"{result['b_near_duplicates_of_a']} of {b['instructions']}")
    return 0
