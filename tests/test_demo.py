"""`sprout demo --quick` end to end: generate on the session's vLLM teacher, real LoRA steps,
eval through a second vLLM server with the adapter, and the HTML report."""

from __future__ import annotations

import json

import pytest

from generator.cli import main

pytestmark = pytest.mark.vllm


def test_demo_quick(vllm_teacher, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--teacher-url", vllm_teacher.base_url]) == 0
    printed = capsys.readouterr().out
    for artifact in ("data/data.jsonl", "train/adapter/adapter_model.safetensors", "train/metrics.jsonl",
                     "eval/summary.json", "eval/results.jsonl", "report.html", "demo_summary.json"):
        assert (out / artifact).exists(), artifact
        assert artifact.split("/")[-1] in printed or artifact.startswith(("train/adapter/", "demo_"))
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["kept_instructions"] == 16
    assert summary["win_rate"] is not None and len(summary["win_rate_ci95"]) == 2
    assert summary["student_reference_loss"] > 0 and summary["base_reference_loss"] > 0
    # the student was trained on the demo's data: its loss on that data went down
    metrics = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < losses[0]
    # rerunning resumes: every stage is already done, nothing is regenerated
    before = (out / "data" / "data.jsonl").read_text()
    assert main(["demo", "--quick", "--out", str(out), "--teacher-url", vllm_teacher.base_url]) == 0
    assert (out / "data" / "data.jsonl").read_text() == before
