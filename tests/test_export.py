"""`sprout export` and `sprout compare` on a run directory written by hand."""

from __future__ import annotations

import json

import pytest


from trainer.cli import main


def _run(tmp_path, name, instructions):
    run = tmp_path / name
    run.mkdir()
    with open(run / "data.jsonl", "w") as f:
        for i, text in enumerate(instructions):
            f.write(json.dumps({"id": f"{name}-{i}", "instruction": text, "input": "ctx" if i % 2 else "",
                                "output": f"answer {i}", "is_classification": False, "instruction_id": str(i)}) + "\n")
    return run


A = ["Write a haiku about autumn leaves.", "Explain how a bicycle gear works.", "List three uses of baking soda."]
B = ["Write a haiku about autumn leaves falling.", "Describe the rules of chess briefly."]


def test_export_all_formats(tmp_path):
    run = _run(tmp_path, "a", A)
    assert main(["export", str(run), "--format", "alpaca", "--out", str(tmp_path / "a.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rows[1] == {"id": "a-1", "instruction": A[1], "input": "ctx", "output": "answer 1"}
    assert main(["export", str(run), "--format", "messages", "--out", str(tmp_path / "m.jsonl")]) == 0
    msg = json.loads((tmp_path / "m.jsonl").read_text().splitlines()[1])["messages"]
    assert msg == [{"role": "user", "content": A[1] + "\n\nctx"}, {"role": "assistant", "content": "answer 1"}]
    from datasets import load_from_disk
    import pyarrow.parquet as pq

    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert load_from_disk(str(tmp_path / "hf"))["instruction"] == A
    assert main(["export", str(run), "--format", "parquet", "--out", str(tmp_path / "d.parquet")]) == 0
    assert pq.read_table(tmp_path / "d.parquet").column("output").to_pylist() == ["answer 0", "answer 1", "answer 2"]


def test_export_missing_run_is_a_clear_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no data.jsonl" in err and "Traceback" not in err


def test_compare_counts_near_duplicates(tmp_path, capsys):
    a, b = _run(tmp_path, "a", A), _run(tmp_path, "b", B)
    assert main(["compare", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"]["instructions"] == 3 and out["b"]["instructions"] == 2
    assert out["b_near_duplicates_of_a"] == 1  # the haiku one (ROUGE-L 0.83)
    assert out["a"]["with_input"] == 1


@pytest.mark.parametrize("argv, expect", [
    (lambda t: ["compare", str(t / "a"), str(t / "b"), "--threshold", "5"], "--threshold must be between 0 and 1"),
    (lambda t: ["dedup", str(t / "latin1.jsonl"), str(t / "o.jsonl")], "latin1.jsonl line 2: not UTF-8 text (byte 0xe9"),
    (lambda t: ["train", "--data", str(t / "latin1.jsonl"), "--out", str(t / "tr")], "latin1.jsonl line 2: not UTF-8"),
    (lambda t: ["train", "--data", str(t / "deep.jsonl"), "--out", str(t / "tr")], "JSON nested too deeply"),
    (lambda t: ["generate", "--config", str(t / "latin1.yaml")], "latin1.yaml line 1: not UTF-8"),
    (lambda t: ["generate", "--seeds", str(t / "deep.jsonl"), "--out", str(t / "g"), "--teacher-url",
                "http://127.0.0.1:9/v1"], "JSON nested too deeply"),
    (lambda t: ["export", str(t / "a"), "--out", str(t / "afile" / "x.jsonl")], "afile is a file, where a folder is needed"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, expect):
    _run(tmp_path, "a", A), _run(tmp_path, "b", B)
    (tmp_path / "latin1.jsonl").write_bytes(b'{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "x"}\n')
    (tmp_path / "latin1.yaml").write_bytes(b"num_instructions: \xe9\n")
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "afile").write_text("")
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err and expect in err, err


def test_seeds_saved_by_excel_with_a_bom_are_read(tmp_path):
    """Excel's "CSV UTF-8" starts the file with a byte-order mark; left in, it glues itself to
    the first column's name and `instruction` looks missing."""
    from generator.seeds import load_seeds

    path = tmp_path / "seeds.csv"
    path.write_bytes("\ufeffinstruction,input,output\nSay hi,,hi\nName a café,,Le Bistro\n".encode())
    assert [t.instruction for t in load_seeds(path)] == ["Say hi", "Name a café"]
