"""`sprout generate` end to end on the real vLLM server with the embedded model."""

from __future__ import annotations

import json
import itertools

import pytest

from trainer.cli import main
from generator.filters import FilterConfig, InstructionFilter
from generator.novelty import rouge_l
from generator.seeds import load_seeds

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
SEEDS = "seeds/test_seeds.jsonl"
PROVENANCE = {"id", "instruction", "input", "output", "is_classification", "templates", "teacher", "sampling",
              "examples", "most_similar", "finish_reason", "prompt_tokens", "completion_tokens", "created_at",
              "run_id"}


def _records(run):
    return [json.loads(line) for line in (run / "data.jsonl").read_text().splitlines()]


def _check_dataset(run, seeds_file=SEEDS):
    recs = _records(run)
    assert len({r["id"] for r in recs}) == len(recs), "duplicate record ids"
    # novelty and the filters apply to the request as the instruction stage wrote it; constraint
    # sentences appended afterwards are shared text by design
    instructions = list(dict.fromkeys(r.get("base_instruction") or r["instruction"] for r in recs))
    assert len(instructions) == len({r["instruction_id"] for r in recs})
    keep = InstructionFilter(FilterConfig())
    assert all(keep(i) is None for i in instructions)
    assert all(r["output"].strip() and r["output"].strip() != r["input"].strip() for r in recs)
    seeds = [s.instruction for s in load_seeds(seeds_file)]
    for a, b in itertools.combinations(instructions, 2):
        assert rouge_l(a, b) <= 0.7, (a, b)
    for a in instructions:
        assert max(rouge_l(a, s) for s in seeds) <= 0.7
    for r in recs:
        assert PROVENANCE <= set(r), PROVENANCE - set(r)
        assert len(r["most_similar"]) == 5 and r["teacher"]["model"]
    return recs, instructions


def test_alpaca_mode_then_resume_after_torn_line(vllm_teacher, tmp_path):
    run = tmp_path / "run"
    args = ["generate", "--seeds", SEEDS, "--out", str(run), "--teacher-url", vllm_teacher.base_url,
            "--mode", "alpaca", "--max-tokens", "300", "--concurrency", "16", "--responses", "2",
            "--response-max-tokens", "160"]
    assert main(args + ["--num-instructions", "6"]) == 0
    first, _ = _check_dataset(run)
    assert len({r["instruction_id"] for r in first}) == 6
    assert all(r["teacher"]["structured"] for r in first)  # vLLM detected: JSON-schema replies
    stats = json.loads((run / "stats.json").read_text())
    assert stats["kept_instructions"] == 6 and stats["completion_tokens"] > 0
    # a crash mid-write leaves a torn last line; the same command with a bigger target resumes
    with open(run / "data.jsonl", "a") as f:
        f.write('{"id": "torn-0", "instruction": "Half a rec')
    assert main(args + ["--num-instructions", "12"]) == 0
    recs, instructions = _check_dataset(run)
    assert len(instructions) == 12
    assert recs[: len(first)] == first  # what was kept before is untouched
    assert "torn-0" not in {r["id"] for r in recs}
    # the same command again has nothing to do and starts no teacher
    assert main(args + ["--num-instructions", "12"]) == 0
    assert _records(run) == recs


def test_self_instruct_mode(vllm_teacher, tmp_path, capsys):
    """Bootstrap, classify, instances and responses on the real 135M teacher, at the paper's
    sampling settings (the defaults). It often answers the few-shot instance prompt with a task of
    its own (refused), so the run is bounded by a request budget: it ends at the target or with the
    one-line budget error, and whatever it kept passes every check with full provenance.
    Temperature 1.0 / top_p 0.95 was tried here and is not reliable on this teacher: half its
    bootstrap replies are word salad, and one CI run spent all 150 requests keeping nothing. At
    the paper's settings four local runs kept all 3, in 33, 37, 58 and 131 requests (the teacher
    copies its examples: up to 106 not_novel); the budget is 200."""
    run = tmp_path / "run"
    rc = main(["generate", "--seeds", SEEDS, "--out", str(run), "--teacher-url", vllm_teacher.base_url,
               "--mode", "self-instruct", "--structured", "text", "--num-instructions", "3",
               "--max-tokens", "160", "--instance-max-tokens", "96", "--concurrency", "32", "--max-requests", "200",
               "--responses", "2", "--max-instances", "2",
               "--response-max-tokens", "160"])
    assert rc == 0 or (rc == 2 and "stopped after" in capsys.readouterr().err)
    recs, instructions = _check_dataset(run)
    assert 1 <= len(instructions) <= 3
    stages = set(itertools.chain.from_iterable(r["templates"] for r in recs))
    assert {"bootstrap", "classify"} <= stages
    assert all(r["examples"]["seed"] for r in recs)


def test_zero_budget_and_a_change_before_any_record(vllm_teacher, tmp_path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    base = ["generate", "--seeds", SEEDS, "--out", str(run), "--teacher-url", vllm_teacher.base_url,
            "--num-instructions", "1", "--max-requests", "0"]
    # --max-requests 0 makes the run give up at once: a clean error, exit 2, config written
    assert main(base) == 2
    assert "stopped after 0 requests" in capsys.readouterr().err
    # the run holds no record yet: a changed setting is taken, not refused (with records it needs
    # --force: tests/test_generate_units.py::test_resume_with_changed_settings_needs_force)
    assert main(base + ["--mode", "self-instruct"]) == 2
    err = capsys.readouterr().err
    assert "stopped after 0 requests" in err and "--force" not in err


@pytest.mark.slow
def test_paper_sized_seeds_reach_the_target_with_default_settings(vllm_teacher, tmp_path):
    """Issue 8's new-user command: a seed file the size and length of Self-Instruct's, default
    settings, the embedded teacher. The window is told to be 1024 tokens (the server has more),
    so the long seed prompts must be fitted -- fewer examples, lower max_tokens -- never refused."""
    run = tmp_path / "alpaca"
    assert main(["generate", "--seeds", "seeds/paper_sized_seeds.jsonl", "--out", str(run), "--teacher-url",
                 vllm_teacher.base_url, "--num-instructions", "4", "--mode", "alpaca", "--max-model-len", "1024"]) == 0
    stats = _bookkeeping(run)
    assert stats["kept_instructions"] == 4
    for r in _records(run):
        if not r["is_classification"]:
            assert r["candidates"][r["selected"]]["text"] == r["output"] and not r["candidates"][r["selected"]]["reasons"]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a hang guard; on this machine 97-128 s
def test_paper_sized_seeds_self_instruct_reach_the_target_with_default_settings(vllm_teacher, tmp_path):
    """The same seeds in self-instruct mode, the default request budget: the 135M teacher copies
    its examples and often answers the instance prompt with a task of its own (counted, refused),
    but the run gets to its target without a request the window cannot hold, its counts equal to
    its files (issue 8's "runs to the target in both modes")."""
    run = tmp_path / "self-instruct"
    assert main(["generate", "--seeds", "seeds/paper_sized_seeds.jsonl", "--out", str(run), "--teacher-url",
                 vllm_teacher.base_url, "--num-instructions", "2", "--mode", "self-instruct",
                 "--max-model-len", "1024"]) == 0
    assert _bookkeeping(run)["kept_instructions"] == 2


def _bookkeeping(run):
    stats = json.loads((run / "stats.json").read_text())
    assert "bad_request" not in stats["rejections"]
    rows = [json.loads(line) for line in (run / "rejected.jsonl").read_text().splitlines()]
    assert stats["rejections"] == {k: sum(r["reason"] == k for r in rows) for k in stats["rejections"]}
    return stats
