"""Reading a user's rows: the one reader every stage uses (seeds, training data, preference
pairs, eval sets, `sprout score`), so every stage takes the same formats and says the same thing
about a broken one.

Formats: JSON lines (.jsonl), JSON (.json: a list, {"any_key": [...]}, or JSON lines saved with a
.json name, as `datasets.to_json` does), CSV (.csv, first line the header), parquet (.parquet),
and folders: a Sprout run or export (its data.jsonl), an HF `datasets` save_to_disk folder (the
"train" split of a DatasetDict, else its first), or a folder holding exactly one data file. A
name that is no file or folder here but reads like a Hugging Face Hub dataset id (`org/name`,
`org/name:split`, default split "train") is loaded with `datasets.load_dataset`.

Text is UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8" and Notepad write
(left in, it glues itself to the first column's name: a "missing column" that is there);
anything else is a one-line error naming the file and line, never a UnicodeDecodeError.

Torn lines: a user's file with a broken line is an error naming FILE line N. A run that may still
be written (or was cut by a crash) passes skip_torn_tail=True: an unreadable LAST line is skipped
(resuming the run repairs it; generator/runs.py has the repairing reader for our own files).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from generator.errors import UserError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(?::[\w.-]+)?")  # org/name[:split]


def decode(data: bytes, where: str | Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{where} line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                        "save the file as UTF-8 and run again") from None


def read_text(path: str | Path) -> str:
    """The file's text (see the module docstring); a missing file is a UserError too."""
    path = Path(path)
    try:
        return decode(path.read_bytes(), path)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder; name a file") from None


def read_rows(path: str | Path, skip_torn_tail: bool = False) -> list[tuple[str, object]]:
    """(where, raw row) pairs of any accepted input; `where` ("FILE line N" for JSONL and CSV,
    "FILE row N" for a JSON list, parquet or HF datasets) is for messages about that row. Rows are
    returned as found (callers check their fields); an empty input gives []."""
    if not Path(path).exists() and HUB_ID.fullmatch(str(path)) and Path(str(path)).suffix.lower() not in DATA_SUFFIXES:
        return _hub_id_rows(str(path))  # a mistyped "seeds/x.jsonl" stays a missing file
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        if _is_hf_folder(path) and not (path / "data.jsonl").is_file():
            return _hf_rows(path)
        if shards := _hub_train_files(path):
            return [row for f in shards for row in read_rows(f, skip_torn_tail)]
        return read_rows(_data_file_in(path), skip_torn_tail)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv_rows(path)
    if suffix == ".parquet":
        return _parquet_rows(path)
    text = read_text(path)
    if suffix == ".json" or (suffix != ".jsonl" and text.lstrip()[:1] == "["):
        return _json_rows(path, text, skip_torn_tail)
    return _jsonl_rows(path, text, skip_torn_tail)


def _loads(line: str, where: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must be one "
                        "JSON object") from None
    except RecursionError:
        raise UserError(f"{where}: JSON nested too deeply") from None


def _jsonl_rows(path: Path, text: str, skip_torn_tail: bool) -> list[tuple[str, object]]:
    lines = text.splitlines()
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if skip_torn_tail and n == last:
            try:
                rows.append((f"{path} line {n}", json.loads(line)))
            except (ValueError, RecursionError):
                pass
            continue
        rows.append((f"{path} line {n}", _loads(line, f"{path} line {n}")))
    return rows


def _json_rows(path: Path, text: str, skip_torn_tail: bool) -> list[tuple[str, object]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # JSON lines saved with a .json name (datasets' to_json does this)
            return _jsonl_rows(path, text, skip_torn_tail)
        raise UserError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise UserError(f"{path}: JSON nested too deeply") from None
    if isinstance(data, dict):  # {"train": [...]} or {"data": [...]}: one list-valued key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of rows (or an object holding one list), "
                            f"got an object with keys {', '.join(map(str, data))[:200]}")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of rows (or JSON lines), got a {type(data).__name__}")
    return [(f"{path} row {n}", row) for n, row in enumerate(data, 1)]


def _csv_rows(path: Path) -> list[tuple[str, object]]:
    import csv
    import io

    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:  # line numbers of the file: the header is line 1
        return [(f"{path} line {reader.line_num}", dict(r)) for r in reader]
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num}: not valid CSV ({e})") from None


def _parquet_rows(path: Path) -> list[tuple[str, object]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path}: not a readable parquet file ({e})") from None
    return [(f"{path} row {n}", r) for n, r in enumerate(table.to_pylist(), 1)]


def _is_hf_folder(path: Path) -> bool:
    return any((path / name).is_file() for name in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _hub_train_files(folder: Path) -> list[Path]:
    """The train split's files of a folder in the Hugging Face Hub layout (what `sprout export
    --format hub` writes, and what load_dataset reads): the default config's train data_files in
    README.md's YAML; else data/train-*; else train-* shards in the folder itself. [] if none."""
    patterns = []
    card = folder / "README.md"
    if card.is_file():
        import yaml

        text = card.read_text(encoding="utf-8", errors="replace")
        try:
            meta = yaml.safe_load(text.split("---")[1]) if text.startswith("---") else None
        except yaml.YAMLError:
            meta = None
        configs = meta.get("configs") if isinstance(meta, dict) else None
        if isinstance(configs, list) and configs:
            chosen = next((c for c in configs if isinstance(c, dict) and (c.get("default") or c.get("config_name") == "default")),
                          configs[0])
            files = chosen.get("data_files") if isinstance(chosen, dict) else None
            if isinstance(files, str):
                patterns = [files]
            elif isinstance(files, list):
                splits = [f for f in files if isinstance(f, dict)]
                train = [f for f in splits if f.get("split") == "train"] or splits[:1]
                for f in train:
                    patterns += f["path"] if isinstance(f.get("path"), list) else [str(f.get("path"))]
    patterns = patterns or ["data/train-*", "data/train.*", "train-*"]
    for pattern in patterns:
        found = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
        if found:
            return found
    return []


def _data_file_in(folder: Path) -> Path:
    if (folder / "data.jsonl").is_file():  # a Sprout run directory or export
        return folder / "data.jsonl"
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files:
        raise UserError(f"{folder}: no data.jsonl, no HF datasets folder and no "
                        f"{'/'.join(DATA_SUFFIXES)} file inside")
    raise UserError(f"{folder}: several data files ({', '.join(p.name for p in files)}); name one of them")


def _hf_rows(folder: Path) -> list[tuple[str, object]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception as e:  # datasets raises FileNotFoundError / ValueError / ... for a bad folder
        raise UserError(f"{folder}: not a readable HF datasets folder ({e})") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds), None)
        if split is None:
            raise UserError(f"{folder}: the DatasetDict has no splits")
        ds, folder = ds[split], folder / split
    return [(f"{folder} row {n}", r) for n, r in enumerate(ds, 1)]


def _hub_id_rows(spec: str) -> list[tuple[str, object]]:
    """Rows of a Hub dataset `org/name[:split]`. Anything that stops it (no network, an unknown
    or private repo, no such split) is one line, which also says no local file has that name: a
    mistyped local path reads like a hub id too."""
    name, _, split = spec.partition(":")
    split = split or "train"
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # noqa: BLE001 -- any failure of the loader is the same one-line message
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise UserError(f"{spec}: no such file or folder here, and not loadable as the Hugging Face Hub dataset "
                        f"{name!r} (split {split!r}): {why}") from None
    return [(f"{name}:{split} row {i + 1}", dict(row)) for i, row in enumerate(ds)]
