"""`sprout export --format hub`: a folder that `datasets.load_dataset` reads as it is, with a
dataset card the Hub parses, a leak-free split by instruction, and that Sprout's own trainer
reads back (SFT rows and preference pairs)."""

from __future__ import annotations

import json

import pytest

from generator import record
from trainer.cli import main


def cand(text, relevance, reasons=()):
    return {"text": text, "finish_reason": "stop", "scores": {"relevance": relevance, "verifiers": 1.0},
            "reasons": list(reasons)}


def _records(n: int = 40) -> list[dict]:
    out = []
    for i in range(n):
        iid = f"ins{i // 2}"  # two instances per instruction: a split must keep them together
        out.append({"id": f"{iid}-{i % 2}", "instruction_id": iid, "instruction": f"Task number {i // 2}: do it.",
                    "input": f"case {i}" if i % 2 else "", "output": f"Answer {i}.", "is_classification": i % 5 == 0,
                    "constraints": [{"type": "title", "params": {}, "text": "Start with a title."}] if i % 3 == 0 else [],
                    "scores": {"relevance": 0.5 + i / 100, "verifiers": 1.0}, "selected": 0, "mode": "alpaca",
                    "teacher": {"model": "SmolLM2-135M-Instruct"},
                    "candidates": [cand(f"Answer {i}.", 0.5 + i / 100), cand("No.", 0.1, ["too_short"] if i % 2 else ())]})
    return out


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records()))
    (run / "stats.json").write_text(json.dumps({"rejections": {"not_novel": 17, "blocklisted_word": 3},
                                               "responses": {"candidates": 80, "passing": 60, "constraint_pass_rate": 0.5}}))
    (run / "config.yaml").write_text("config:\n  mode: alpaca\n  num_instructions: 20\n  novelty_threshold: 0.7\n"
                                     "  responses: 2\n  score: [verifiers]\ninputs:\n  seeds: " + "ab" * 32 + "\n")
    return run


def _load(path, *args):
    from datasets import load_dataset

    return load_dataset(str(path), *args)


def test_hub_export_is_what_load_dataset_reads(run_dir, tmp_path, capsys):
    out = tmp_path / "my-data"
    assert main(["export", str(run_dir), "--format", "hub", "--out", str(out), "--test-fraction", "0.3",
                 "--license", "apache-2.0"]) == 0
    assert "load_dataset" in capsys.readouterr().out
    ds = _load(out)
    assert set(ds) == {"train", "test"}
    rows = list(ds["train"]) + list(ds["test"])
    assert len(rows) == 40 and 0 < len(ds["test"]) < 40
    by_id = {r["id"]: r for r in _records()}
    for r in rows:  # every column faithful to the record
        src = by_id[r["id"]]
        assert (r["instruction"], r["input"], r["output"]) == (src["instruction"], src["input"], src["output"])
        assert r["messages"] == record.to_messages(src["instruction"], src["input"], src["output"])
        assert r["scores"] == src["scores"] and r["is_classification"] == src["is_classification"]
        assert r["constraints"] == [c["text"] for c in src["constraints"]]
    # no instruction has records on both sides of the split
    train_ids = {r["id"].split("-")[0] for r in ds["train"]}
    assert train_ids.isdisjoint(r["id"].split("-")[0] for r in ds["test"])

    pairs = _load(out, "preference")
    assert sum(len(s) for s in pairs.values()) == 40
    p = pairs["train"][0]
    assert p["chosen"].startswith("Answer") and p["rejected"] == "No." and p["score_chosen"] > p["score_rejected"]

    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "apache-2.0" and card.data.size_categories == ["n<1K"]
    assert "synthetic" in card.data.tags and {c["config_name"] for c in card.data.configs} == {"default", "preference"}
    for line in ("SmolLM2-135M-Instruct", "| not_novel | 17 |", "abababababababab", "--num-instructions 20"):
        assert line in card.text


def test_the_split_is_stable_and_the_export_replaceable(run_dir, tmp_path):
    out = tmp_path / "d"
    assert main(["export", str(run_dir), "--format", "hub", "--out", str(out), "--test-fraction", "0.3"]) == 0
    first = sorted(_load(out)["test"]["id"])
    assert main(["export", str(run_dir), "--format", "hub", "--out", str(out), "--test-fraction", "0.3"]) == 0
    assert sorted(_load(out)["test"]["id"]) == first  # the same instructions held out, run after run
    assert main(["export", str(run_dir), "--format", "hub", "--out", str(out)]) == 0
    assert set(_load(out)) == {"train"}  # no stale test shard left behind
    assert not (tmp_path / "d.tmp").exists()


def test_the_trainer_reads_a_hub_folder(run_dir, tmp_path):
    from trainer.data import load_examples, load_pairs

    out = tmp_path / "d"
    assert main(["export", str(run_dir), "--format", "hub", "--out", str(out), "--test-fraction", "0.3"]) == 0
    train = _load(out)["train"]
    examples = load_examples(out)  # the folder: its default config's train split
    assert len(examples) == len(train)
    assert examples[0].messages == train[0]["messages"]
    assert len(load_pairs(out / "preference")) == len(_load(out, "preference")["train"])


@pytest.mark.parametrize("extra, expect", [
    (["--test-fraction", "1.5"], "--test-fraction must be at least 0 and below 1"),
    (["--format", "alpaca", "--license", "mit"], "go with --format hub"),
    (["--push-to-hub", "just-a-name"], "name the repository as ORG/NAME"),
    (["--push-to-hub", "me/data"], "no Hugging Face token"),
])
def test_hub_mistakes_are_one_line_errors(run_dir, tmp_path, capsys, monkeypatch, extra, expect):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no cached login either
    argv = ["export", str(run_dir), "--out", str(tmp_path / "d"), *extra]
    if "--format" not in extra:
        argv += ["--format", "hub"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_unrelated_folder_is_never_replaced(run_dir, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["export", str(run_dir), "--format", "hub", "--out", str(out)]) == 2
    assert "not an earlier hub export" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"
