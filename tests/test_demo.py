"""README's first command, `sprout demo --quick`, end to end exactly as a new user runs it: the
demo starts its own vLLM teacher, real LoRA steps, eval through a vLLM server with the adapter,
the HTML report; then the same command again resumes with nothing redone. CI runs the demo only
here (second tier)."""

from __future__ import annotations

import json

import pytest

from trainer.cli import main

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.mark.timeout(2400)  # a guard against a hang, not a speed target (~10 min on 2 idle cores)
def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for artifact in ("data/data.jsonl", "train/adapter/adapter_model.safetensors", "train/metrics.jsonl",
                     "eval/summary.json", "eval/results.jsonl", "report.html", "demo_summary.json"):
        assert (out / artifact).exists(), artifact
        assert artifact.split("/")[-1] in printed or artifact.startswith(("train/adapter/", "demo_"))
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["kept_instructions"] == 8
    # the headline is the verifiable pass rate with a paired interval, not a judge's win rate
    assert "HEADLINE instruction following" in printed
    assert "a smoke run, not a measurement" in printed
    assert summary["verifiable_items"] == 24 and len(summary["verifiable_diff"]["constraint_strict"]["ci95"]) == 2
    if summary["judge_informative"] is False:
        assert "NOT INFORMATIVE" in printed and "judge win rate" not in printed
    # every kept response passed its checks and constraints (best-of-N from the candidates)
    from generator.verifiers import check_all

    for r in (json.loads(x) for x in (out / "data" / "data.jsonl").read_text().splitlines()):
        assert r["candidates"][r["selected"]]["text"] == r["output"] and all(check_all(r["output"], r["constraints"]))
    assert summary["student_reference_loss"] > 0 and summary["base_reference_loss"] > 0
    # the served student is the adapter, not the base under another name (see answer_each_model)
    vrows = [json.loads(x) for x in (out / "eval" / "verifiable.jsonl").read_text().splitlines()]
    assert sum(r["answers"]["base"] != r["answers"]["student"] for r in vrows) >= len(vrows) // 4
    # the student was trained on the demo's data: its loss on that data went down
    metrics = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0]
    # rerunning resumes: every stage is already done, nothing is regenerated
    before = (out / "data" / "data.jsonl").read_text()
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    assert (out / "data" / "data.jsonl").read_text() == before
    # --dpo on the finished run adds only its stages: pairs from the candidates, DPO from the SFT
    # adapter (its reference), a second eval; base / SFT / SFT+DPO side by side
    assert main(["demo", "--quick", "--dpo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert (out / "data" / "data.jsonl").read_text() == before
    summary = json.loads((out / "demo_summary.json").read_text())
    d = summary["dpo"]
    assert d["pairs"] >= 4 and (out / "dpo" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "dpo" / "summary.json").read_text())["init_adapter"] == str(out / "train" / "adapter")
    assert set(d["verifiable"]) >= {"base", "sft", "dpo", "diff"} and d["verifiable"]["items"] == 24
    assert d["verifiable"]["sft"] == summary["verifiable_student"]
    assert f"DPO on {d['pairs']} preference pairs" in printed and "SFT+DPO" in printed
    dpo_rows = [json.loads(x) for x in (out / "eval-dpo" / "verifiable.jsonl").read_text().splitlines()]
    assert sum(r["answers"]["student"] != s["answers"]["student"] for r, s in zip(dpo_rows, vrows)) >= 1
