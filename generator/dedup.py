"""`sprout dedup`: drop the records of any dataset whose text has ROUGE-L F above a threshold with
an earlier kept one (first occurrence wins, input order kept), with generator.novelty's pool, so
the decisions are rouge_score's. Reads what every stage reads (JSONL, JSON, CSV, parquet, run or
HF folders); writes JSONL, atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from generator.config import setting
from generator.errors import UserError
from generator.novelty import TOKENIZERS, NoveltyPool
from generator.rows import read_rows


def dedup_records(records: list[dict], threshold: float = 0.7, key: str = "instruction",
                  use_stemmer: bool = False, tokenizer: str = "rouge") -> tuple[list[dict], list[dict]]:
    """Drop records whose `key` text has ROUGE-L F > threshold with an earlier kept one. Returns
    (kept, dropped) in input order: kept are the input dicts; dropped are copies with
    "_nearest": {"instruction": the most similar kept text, "rouge_l": its F}."""
    pool = NoveltyPool(threshold, use_stemmer, tokenizer)
    kept, dropped = [], []
    for i, rec in enumerate(records, 1):
        if problem := _problem(rec, key):
            raise UserError(f"record {i}: {problem}")
        novel, near = pool.check_and_add(rec[key], k=1, scan=False)
        if novel:
            kept.append(rec)
        else:
            dropped.append({**rec, "_nearest": {"instruction": near[0][0], "rouge_l": near[0][1]}})
    return kept, dropped


def _problem(rec, key: str) -> str | None:
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    if key not in rec:
        return f"no {key!r} field (pick the field with --key)"
    return None if isinstance(rec[key], str) else f"field {key!r} is not a string"


def _read(path: Path, key: str) -> list[dict]:
    """Every row of the input (any format the one row reader takes), checked for `key`."""
    records = []
    for where, rec in read_rows(path):
        if problem := _problem(rec, key):
            raise UserError(f"{where}: {problem}")
        records.append(rec)
    return records


def dedup_file(in_path, out_path, threshold: float = 0.7, key: str = "instruction",
               use_stemmer: bool = False, tokenizer: str = "rouge") -> tuple[int, int]:
    """JSONL in, the kept records (input order) out. Returns (kept, dropped) counts."""
    records = _read(Path(in_path), key)  # all read first: out_path may be in_path
    kept, dropped = dedup_records(records, threshold, key, use_stemmer, tokenizer)
    out = Path(out_path)
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in kept)
        tmp.replace(out)  # a crash mid-write leaves the old file, never half a dataset
    except OSError as e:
        raise UserError(f"{out}: cannot write ({e.strerror or e})") from None
    return len(kept), len(dropped)


@dataclasses.dataclass
class DedupConfig:
    threshold: float = setting(0.7, "drop a record when ROUGE-L F > this")
    key: str = setting("instruction", "field holding the text to compare")
    stem: bool = setting(False, "Porter-stem tokens first (rouge_score's use_stemmer)")
    tokenizer: str = setting("rouge", "words ROUGE-L counts: rouge (rouge_score's [a-z0-9] runs) or unicode "
                             "(letters and digits of any script, each CJK character a word)", choices=TOKENIZERS)


def add_dedup_args(p) -> None:
    """Arguments of `sprout dedup` on argparse parser `p`: the two files, then DedupConfig's flags."""
    from generator.config import add_flags

    p.add_argument("input", metavar="IN", help="dataset to read: JSONL, JSON, CSV, parquet or a run / HF datasets folder")
    p.add_argument("output", metavar="OUT", help="JSONL file for the kept records")
    add_flags(p, DedupConfig)
    p.set_defaults(func=run_dedup)


def run_dedup(args) -> int:
    from generator.config import load_config

    cfg = load_config(DedupConfig, getattr(args, "config", None), vars(args))
    if not 0.0 <= cfg.threshold <= 1.0:  # also rejects NaN
        raise UserError(f"--threshold must be between 0 and 1, got {cfg.threshold}")
    if cfg.tokenizer not in TOKENIZERS:  # a config file bypasses argparse's choices
        raise UserError(f"tokenizer: choose rouge or unicode, got {cfg.tokenizer!r}")
    kept, dropped = dedup_file(args.input, args.output, cfg.threshold, cfg.key, cfg.stem, cfg.tokenizer)
    print(f"kept {kept} of {kept + dropped} (dropped {dropped} near-duplicates, "
          f"ROUGE-L > {cfg.threshold:g})")
    return 0
