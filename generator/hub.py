"""`sprout export RUN --format hub --out DIR`: a run as a dataset in the Hugging Face Hub layout,
which `datasets.load_dataset(DIR)` reads and the Hub shows as it is, with its dataset card.

    DIR/README.md                           the card: YAML metadata (configs, features, splits, size
                                            category, tags, licence) and how the data was made
    DIR/data/train-00000-of-00001.parquet   config "default": Alpaca columns + `messages` + scores
    DIR/data/test-00000-of-00001.parquet    only with --test-fraction
    DIR/preference/train-00000-of-00001.parquet   config "preference", where the run has pairs

The split is by instruction, not by record: the instances of one instruction land in one split,
so a test split never holds a sibling of a training row. `--push-to-hub ORG/NAME` uploads the
folder with huggingface_hub (a token from `hf auth login` or HF_TOKEN)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from generator.errors import UserError

SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


def size_category(n: int) -> str:
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>100M")


def split_of(rec: dict, test_fraction: float) -> str:
    """'train' or 'test', a pure function of the instruction (its id, else its text)."""
    key = str(rec.get("instruction_id") or rec["instruction"]).encode()
    u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2 ** 64
    return "test" if u < test_fraction else "train"


def hub_row(rec: dict, score_keys: list[str]) -> dict:
    """One record in the default config: Alpaca columns, the same example as chat `messages`, and
    the selected response's scores (one struct field per scorer the run used; null where absent)."""
    from generator.export import to_alpaca, to_messages

    scores = rec.get("scores") or {}
    return {**to_alpaca(rec), "id": str(rec.get("id", "")), "messages": to_messages(rec)["messages"],
            "is_classification": bool(rec.get("is_classification")),
            "constraints": [str(c.get("text", "")) for c in rec.get("constraints") or [] if isinstance(c, dict)],
            "scores": {k: (float(scores[k]) if isinstance(scores.get(k), (int, float)) else None) for k in score_keys}}


def preference_row(pair: dict) -> dict:
    from generator.scoring import combined

    return {"id": pair["id"], "prompt": pair["prompt"], "chosen": pair["chosen"], "rejected": pair["rejected"],
            "score_chosen": round(combined({"scores": pair["scores_chosen"]}), 4),
            "score_rejected": round(combined({"scores": pair["scores_rejected"]}), 4),
            "rejected_reasons": [str(r) for r in pair["rejected_reasons"]]}


def _write_config(out: Path, folder: str, rows_by_split: dict[str, list[dict]]) -> dict:
    """Parquet shards of one config; returns its YAML entries (data_files, dataset_info)."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    files, splits, features = [], [], None
    for split, rows in rows_by_split.items():
        if not rows:
            continue
        ds = Dataset.from_list(rows, features=features)
        features = ds.features  # every split of a config has the same features
        (out / folder).mkdir(parents=True, exist_ok=True)
        path = out / folder / f"{split}-00000-of-00001.parquet"
        pq.write_table(ds.data.table, path)  # the table carries the features in its schema metadata
        files.append({"split": split, "path": f"{folder}/{split}-*"})
        splits.append({"name": split, "num_bytes": path.stat().st_size, "num_examples": len(rows)})
    return {"data_files": files, "features": features._to_yaml_list(), "splits": splits}


def export_hub(run: str, out: str, test_fraction: float = 0.0, license: str | None = None,
               pair_margin: float = 0.1, rejected: str = "worst", seed: int = 0) -> dict:
    """Write the Hub-layout folder; returns counts for the command's summary line."""
    from generator.export import load_run_records, preference_pairs

    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test-fraction must be at least 0 and below 1, got {test_fraction}")
    records = load_run_records(run)
    if not records:
        raise UserError(f"{run}: the run has no records yet")
    out_path = Path(out)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        if not (out_path / "README.md").is_file() or not (out_path / "data").is_dir():
            raise UserError(f"{out_path}: exists and is not an earlier hub export; name a new folder")
    score_keys = sorted({k for r in records for k in (r.get("scores") or {})})
    default = {"train": [], "test": []}
    for rec in records:
        default[split_of(rec, test_fraction)].append(hub_row(rec, score_keys))
    pairs, skipped = preference_pairs(records, pair_margin, rejected, seed)
    by_id = {str(r.get("id", n)): r for n, r in enumerate(records)}
    preference = {"train": [], "test": []}
    for p in pairs:
        preference[split_of(by_id[p["id"]], test_fraction)].append(preference_row(p))

    tmp = out_path.with_name(out_path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    configs = {"default": _write_config(tmp, "data", default)}
    if pairs:
        configs["preference"] = _write_config(tmp, "preference", preference)
    counts = {"records": len(records), "train": len(default["train"]), "test": len(default["test"]),
              "pairs": len(pairs), "pairs_skipped": skipped}
    card = dataset_card(Path(run), out_path.name, configs, records, counts, license)
    (tmp / "README.md").write_text(card, encoding="utf-8")
    shutil.rmtree(out_path, ignore_errors=True)  # an earlier export of ours (checked above)
    tmp.replace(out_path)  # the folder appears whole or not at all
    return counts


# -- the dataset card -------------------------------------------------------------------------------


def _run_files(run: Path) -> tuple[dict, dict]:
    """(config.yaml, stats.json) of the run, {} where missing or unreadable."""
    from generator.runs import read_config, read_json_object

    folder = run if run.is_dir() else run.parent
    saved = read_config(folder / "config.yaml") if (folder / "config.yaml").is_file() else None
    return saved or {}, read_json_object(folder / "stats.json")


def _yaml_header(name: str, configs: dict, total: int, mode: str, license: str | None) -> str:
    import yaml

    meta = {}
    if license:
        meta["license"] = license
    meta |= {"task_categories": ["text-generation"], "tags": ["synthetic", "sprout", f"sprout-{mode}"],
             "size_categories": [size_category(total)], "pretty_name": name,
             "configs": [{"config_name": c, "data_files": v["data_files"], **({"default": True} if c == "default" else {})}
                         for c, v in configs.items()],
             "dataset_info": [{"config_name": c, "features": v["features"], "splits": v["splits"]}
                              for c, v in configs.items()]}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _reproduce(cfg: dict) -> str:
    """The `sprout generate` line for the run's settings that differ from the defaults."""
    from generator.gen_config import GenerateConfig

    defaults = GenerateConfig().__dict__
    parts = ["sprout generate"]
    for key, value in cfg.items():
        if key in ("out", "teacher_url", "api_key_env") or value == defaults.get(key, value) or value in (None, [], False):
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [f"{flag} {v}" for v in value]
        else:
            parts.append(f"{flag} {value}")
    return " \\\n    ".join(parts + ["--out RUN"])


def dataset_card(run: Path, name: str, configs: dict, records: list[dict], counts: dict, license: str | None) -> str:
    from generator import __version__

    saved, stats = _run_files(run)
    cfg = saved.get("config") or {}
    mode = str(cfg.get("mode") or stats.get("mode") or (records[0].get("mode") if records else "") or "unknown")
    teacher = (records[0].get("teacher") or {}).get("model") if records else None
    teacher = teacher or cfg.get("teacher_model") or "the embedded SmolLM2-135M-Instruct"
    instructions = len({r.get("instruction_id") or r["instruction"] for r in records})
    lines = [_yaml_header(name, configs, counts["records"], mode, license), f"# {name}", "",
             f"Synthetic instruction-tuning data made by Sprout {__version__} "
             f"(mode `{mode}`) with **{teacher}** as the teacher: {counts['records']} records from "
             f"{instructions} distinct instructions. Every record is machine-written; read the limits below.", "",
             "## Contents", "", "| config | split | rows |", "|---|---|---|"]
    for c, v in configs.items():
        lines += [f"| `{c}` | {s['name']} | {s['num_examples']} |" for s in v["splits"]]
    lines += ["", "`default` holds Alpaca columns (`instruction`, `input`, `output`), the same example as chat "
              "`messages`, the verifiable `constraints` appended to the instruction, and `scores` (the selected "
              "response's score from each scorer the run used).",
              *(["`preference` holds TRL-style pairs (`prompt`, `chosen`, `rejected`) built from the run's scored "
                 "candidates: chosen is the selected response, rejected a worse candidate (a failed check, or a "
                 f"combined score lower by the margin); {sum(counts['pairs_skipped'].values())} records gave no pair."]
                if "preference" in configs else []),
              "", "```python", "from datasets import load_dataset", "",
              f'ds = load_dataset("{name}")  # or the folder\'s path',
              *([f'pairs = load_dataset("{name}", "preference")'] if "preference" in configs else []), "```", ""]
    lines += ["## How it was made", "", f"- Teacher: `{teacher}`, mode `{mode}`; the split is by instruction, so "
              "no instruction has records in two splits."]
    inputs = saved.get("inputs") or {}
    if inputs.get("seeds"):
        lines.append(f"- Seeds: `{cfg.get('seeds') or 'the seed tasks shipped with Sprout'}` (sha256 `{inputs['seeds'][:16]}…`).")
    templates = {k.removeprefix("template "): v for k, v in inputs.items() if k.startswith("template ")}
    templates = templates or {k: v for k, v in (saved.get("templates") or {}).items() if isinstance(v, str)}
    if templates:
        lines.append("- Prompt templates (sha256): " + ", ".join(f"`{k}` `{v[:12]}`" for k, v in sorted(templates.items())) + ".")
    if cfg:
        lines.append(f"- Filters: ROUGE-L novelty threshold {cfg.get('novelty_threshold')}, instruction length "
                     f"{cfg.get('min_words')}-{cfg.get('max_words')} words, a blocklist of {len(cfg.get('blocklist') or [])} "
                     f"words; decontaminated against {len(cfg.get('decontaminate') or [])} eval set(s). "
                     f"{cfg.get('responses')} response(s) sampled per instruction, scored by "
                     f"{', '.join(cfg.get('score') or []) or 'nothing'}; the best passing one is kept.")
    rejections = stats.get("rejections") or {}
    if rejections:
        lines += ["", "What the filters rejected:", "", "| reason | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(rejections.items(), key=lambda kv: -kv[1])]
    resp = stats.get("responses") or {}
    if resp:
        lines += ["", f"Responses: {resp.get('candidates')} candidates, {resp.get('passing')} passed every check"
                  + (f"; verifiable constraints passed {resp['constraint_pass_rate']:.0%} of the time" if
                     isinstance(resp.get("constraint_pass_rate"), (int, float)) else "") + "."]
    if stats.get("completion_tokens"):
        lines.append(f"Teacher cost: {stats.get('requests')} requests, {stats.get('prompt_tokens')} prompt and "
                     f"{stats['completion_tokens']} completion tokens.")
    lines += ["", "To make data like it (the run's non-default settings):", "", "```", _reproduce(cfg),
              f"sprout export RUN --format hub --out {name}", "```", "",
              "## Licence", "",
              (f"Released under `{license}`. " if license else "No licence was set at export (`--license`). ")
              + "The terms of the teacher model and of the seed tasks apply to generated data too; check both.",
              "", "## Limits", "",
              "Written by a language model and filtered automatically: answers can be wrong, shallow or "
              "repetitive, and the scores come from automatic checks (verifiable constraints, agreement "
              "among the teacher's samples, an LLM judge if one was used), not from people. A small "
              "teacher writes weak data; read a sample before training on it.", ""]
    return "\n".join(lines)


# -- upload -----------------------------------------------------------------------------------------


def push_to_hub(folder: str, repo: str, private: bool = False) -> str:
    """Upload an exported folder as a dataset repository; returns its URL."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise UserError(f"--push-to-hub {repo!r}: name the repository as ORG/NAME (or USER/NAME)")
    if not get_token():
        raise UserError("--push-to-hub: no Hugging Face token; run `hf auth login` or set HF_TOKEN, then export again")
    api = HfApi()
    try:
        api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=folder,
                          commit_message="Upload dataset exported by sprout")
    except (HfHubHTTPError, OSError) as e:
        raise UserError(f"--push-to-hub {repo}: upload failed ({str(e).splitlines()[0]}); the export is in {folder}") from None
    return f"https://huggingface.co/datasets/{repo}"
