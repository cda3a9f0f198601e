"""`sprout export` (a run's records as Alpaca JSONL, chat messages, HF datasets, parquet or
preference pairs) and `sprout compare` (two runs side by side: counts, lengths, diversity, overlap).

Preference pairs come from the same run: `sprout generate --responses N` keeps every scored
candidate, so each record already holds a chosen answer (the selected one) and, often, worse ones.
A candidate that failed a check (constraint missed, cut by the length limit, a deflection) is a
natural rejected answer; among passing ones, one whose combined score (generator.scoring.combined)
is at least --pair-margin below the chosen one's. Columns follow TRL's preference dataset types:
`preference` is the standard form (prompt / chosen / rejected strings), `preference-messages` the
conversational one (prompt = [user turn], chosen / rejected = [assistant turn])."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

from generator.errors import UserError
from generator import record
from generator.rows import read_rows

PREFERENCE_FORMATS = ("preference", "preference-messages")
FORMATS = ("alpaca", "messages", "hf", "parquet", "hub", *PREFERENCE_FORMATS)
REJECTED = ("worst", "random")


def load_run_records(run: str | Path) -> list[dict]:
    """Records of a run directory (or its data.jsonl); a torn last line is skipped, not fatal."""
    path = Path(run)
    path = path / "data.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"{run}: no data.jsonl here; pass a run directory made by sprout generate")
    records = []
    # a run still being written, or cut by a crash, may end in a torn line: resume repairs it
    for where, rec in read_rows(path, skip_torn_tail=True):
        if not isinstance(rec, dict):
            raise UserError(f"{where}: expected a JSON object (a record)")
        for key in ("instruction", "output"):
            if not isinstance(rec.get(key), str):
                raise UserError(f"{where}: missing field {key!r}")
        records.append(rec)
    return records


def to_alpaca(rec: dict) -> dict:
    """Alpaca columns: a multi-turn record's first turn (Alpaca has no room for more)."""
    return {"id": rec.get("id", ""), "instruction": rec["instruction"], "input": rec.get("input", ""),
            "output": rec["output"]}


def to_messages(rec: dict) -> dict:
    """Chat messages: the whole conversation of a multi-turn record, else its one turn."""
    if isinstance(rec.get("messages"), list):
        return {"id": rec.get("id", ""), "messages": rec["messages"]}
    return {"id": rec.get("id", ""), "messages": record.to_messages(rec["instruction"], rec.get("input", ""),
                                                                    rec["output"])}


# -- preference pairs -------------------------------------------------------------------------------


def pick_rejected(rec: dict, margin: float, rejected: str, rng: random.Random) -> tuple[int | None, str | None]:
    """(index of the rejected candidate, None) or (None, why the record gives no pair)."""
    from generator.scoring import combined

    cands, sel = rec.get("candidates") or [], rec.get("selected")
    if len(cands) < 2:
        return None, "fewer_than_2_candidates"
    if not isinstance(sel, int) or not 0 <= sel < len(cands) or cands[sel].get("reasons"):
        return None, "no_selected_candidate"
    best = combined(cands[sel])
    worse = [i for i, c in enumerate(cands)
             if i != sel and c.get("text", "").strip() and c["text"].strip() != cands[sel]["text"].strip()
             and (c.get("reasons") or round(best - combined(c), 9) >= margin)]
    if not worse:
        return None, "no_worse_candidate"
    if rejected == "random":
        return rng.choice(worse), None
    # worst: a failed candidate before any passing one, then the lowest score, then the lowest index
    return min(worse, key=lambda i: (not cands[i].get("reasons"), combined(cands[i]), i)), None


def preference_pairs(records: list[dict], margin: float = 0.1, rejected: str = "worst", seed: int = 0,
                     conversational: bool = False) -> tuple[list[dict], dict[str, int]]:
    """TRL-style preference rows from a run's records, and the skipped records counted by reason."""
    if rejected not in REJECTED:
        raise UserError(f"--rejected {rejected!r}: choose one of {', '.join(REJECTED)}")
    if margin < 0:
        raise UserError(f"--pair-margin must not be negative, got {margin}")
    pairs, skipped = [], {}
    for n, rec in enumerate(records):
        rng = random.Random(f"{seed}:{n}")  # one stream per record: a pair never depends on the others
        r, why = pick_rejected(rec, margin, rejected, rng)
        if r is None:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        chosen, worse = rec["candidates"][rec["selected"]], rec["candidates"][r]
        prompt, c_text, r_text = record.user_turn(rec["instruction"], rec.get("input", "")), chosen["text"], worse["text"]
        if conversational:
            row = {"prompt": [{"role": "user", "content": prompt}],
                   "chosen": [{"role": "assistant", "content": c_text}],
                   "rejected": [{"role": "assistant", "content": r_text}]}
        else:
            row = {"prompt": prompt, "chosen": c_text, "rejected": r_text}
        pairs.append({"id": rec.get("id", str(n)), **row, "scores_chosen": chosen.get("scores", {}),
                      "scores_rejected": worse.get("scores", {}), "rejected_reasons": worse.get("reasons", [])})
    return pairs, skipped


def _write_jsonl(path: Path, rows) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def export_preference(run: str, fmt: str, out: str, margin: float = 0.1, rejected: str = "worst",
                      seed: int = 0) -> tuple[int, dict[str, int]]:
    """Write preference pairs; returns (pairs written, skipped records by reason)."""
    records = load_run_records(run)
    if not records:
        raise UserError(f"{run}: the run has no records yet")
    pairs, skipped = preference_pairs(records, margin, rejected, seed, conversational=fmt == "preference-messages")
    if not pairs:
        raise UserError(f"{run}: no preference pairs ({_skips(skipped)}); generate with --responses 2 or more "
                        "so each instruction has candidates to compare, or lower --pair-margin")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_path, pairs)
    return len(pairs), skipped


def _skips(skipped: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "none skipped"


def export(run: str, fmt: str, out: str) -> int:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt in PREFERENCE_FORMATS:
        return export_preference(run, fmt, out)[0]
    if fmt == "hub":
        from generator.hub import export_hub

        return export_hub(run, out)["records"]
    records = load_run_records(run)
    if not records:
        raise UserError(f"{run}: the run has no records yet")
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt in ("alpaca", "messages"):
        conv = to_alpaca if fmt == "alpaca" else to_messages
        _write_jsonl(out_path, (conv(rec) for rec in records))
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
    p.add_argument("--out", required=True, help="output file (a folder for --format hf and hub)")
    h = p.add_argument_group("Hub layout (--format hub): data/*.parquet + a dataset card, what load_dataset(DIR) reads")
    h.add_argument("--test-fraction", type=float, default=0.0, metavar="F",
                   help="put this share of the instructions (all their records) in a test split (default 0: train only)")
    h.add_argument("--license", help="licence id for the card's metadata (e.g. apache-2.0; check the teacher's terms)")
    h.add_argument("--push-to-hub", metavar="ORG/NAME", help="upload the folder as a dataset repository (needs a token)")
    h.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    g = p.add_argument_group("preference pairs (--format preference / preference-messages)")
    g.add_argument("--pair-margin", type=float, default=0.1, metavar="M",
                   help="a passing candidate is rejected only when its combined score is at least M below the "
                        "chosen one's (failed candidates always qualify; default 0.1)")
    g.add_argument("--rejected", choices=REJECTED, default="worst",
                   help="which worse candidate to pair: the worst (default) or a random one (seeded)")
    g.add_argument("--seed", type=int, default=0, help="seed for --rejected random (default 0)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    if args.format != "hub" and (args.push_to_hub or args.test_fraction or args.license):
        raise UserError("--test-fraction, --license and --push-to-hub go with --format hub")
    if args.format == "hub":
        from generator.hub import export_hub, push_to_hub

        c = export_hub(args.run, args.out, args.test_fraction, args.license, args.pair_margin, args.rejected, args.seed)
        print(f"wrote {c['records']} records to {args.out} (Hub layout: train {c['train']}"
              + (f", test {c['test']}" if c["test"] else "") + f"; {c['pairs']} preference pairs; card README.md); "
              f"load it with datasets.load_dataset({str(args.out)!r})")
        if args.push_to_hub:
            print(f"uploaded to {push_to_hub(args.out, args.push_to_hub, args.private)}")
        return 0
    if args.format in PREFERENCE_FORMATS:
        n, skipped = export_preference(args.run, args.format, args.out, args.pair_margin, args.rejected, args.seed)
        print(f"wrote {n} preference pairs to {args.out} ({args.format}); "
              f"skipped {sum(skipped.values())} records ({_skips(skipped)})")
        return 0
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
    if not 0.0 <= args.threshold <= 1.0:  # also rejects NaN
        raise UserError(f"--threshold must be between 0 and 1 (a ROUGE-L F-measure), got {args.threshold}")
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
