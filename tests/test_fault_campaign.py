"""The fault campaign (second tier): kill Sprout at random moments, take its teacher away, and
check the invariants a user relies on after every resume -- target reached, no duplicate, no torn
or invalid line, every group complete, stats equal to the files, training resumed exactly.

The teacher is the scripted one (tests/fault_server.py): deterministic, instant, and able to go
down on demand; the moments of the kills come from a seeded RNG, so a failure reproduces."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.fault_server import FaultServer
from tests.test_pipeline_scripted import SEEDS, Script, _check_bookkeeping, _rows, templates  # noqa: F401

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _generate_cmd(url: str, out: Path, template_dir: str, target: int) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "generate", "--teacher-url", url, "--teacher-model", "fake-model",
            "--out", str(out), "--num-instructions", str(target), "--seeds", SEEDS, "--templates", template_dir,
            "--structured", "text", "--responses", "3", "--constraints", "0.5", "--concurrency", "6"]


def _check_records(out: Path) -> list[dict]:
    """What a run wrote, however it ended: every line whole and valid, no duplicate, every group
    complete, no instruction twice, stats equal to the files."""
    raw = (out / "data.jsonl").read_text()
    assert raw.endswith("\n")
    records = [json.loads(line) for line in raw.splitlines()]
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "duplicate record"
    groups = Counter(r["instruction_id"] for r in records)
    assert all(groups[r["instruction_id"]] == r["num_instances"] for r in records), "incomplete group"
    firsts = [r["base_instruction"] for r in records if r["instance_index"] == 0]
    assert len(firsts) == len(set(firsts)), "an instruction twice"
    _check_bookkeeping(out)
    return records


def _check_run(out: Path, target: int) -> None:
    records = _check_records(out)
    firsts = [r["base_instruction"] for r in records if r["instance_index"] == 0]
    assert len(firsts) == target, "target not reached exactly"


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_generate_killed_at_random_moments_resumes_to_exactly_its_target(tmp_path, templates):  # noqa: F811
    """Kill moments are counted in records, not seconds, so every launch is killed whatever the
    machine's speed: every fourth one while it starts (before any request), the others after
    1-12 new records."""
    rng = random.Random(7)
    out, target, kills = tmp_path / "run", 200, 0
    data = out / "data.jsonl"
    with FaultServer(script=Script()) as srv:
        for attempt in range(12):
            before = _lines(data)
            proc = subprocess.Popen(_generate_cmd(srv.url, out, templates, target), env=ENV, cwd=tmp_path,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if attempt % 4 == 0:
                time.sleep(rng.uniform(0.2, 1.0))
            else:
                wanted, deadline = before + rng.randint(1, 12), time.monotonic() + 120
                while proc.poll() is None and _lines(data) < wanted and time.monotonic() < deadline:
                    time.sleep(0.02)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            _, err = proc.communicate(timeout=60)
            assert "Traceback" not in err, err
            if attempt % 3 == 1 and (out / "data.jsonl").exists():  # a crash mid-write: half a line
                with open(out / "data.jsonl", "a") as f:
                    f.write('{"id": "torn-0", "instruction": "cut he')
        final = subprocess.run(_generate_cmd(srv.url, out, templates, target), env=ENV, cwd=tmp_path,
                               capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert kills == 12
    _check_run(out, target)


def test_teacher_outages_are_ridden_out(tmp_path, templates, capfd, monkeypatch):  # noqa: F811
    """The teacher answers 503 for a few seconds, three times, while a run goes on; then the
    teacher goes away for good and the run stops on its own, records intact."""
    from generator.client import ClientConfig
    from generator.gen_config import GenerateConfig
    from generator.generate import generate

    down = threading.Event()
    script = Script()

    def flaky(kind, req):
        return 503 if down.is_set() else script(kind, req)

    def outages():
        for _ in range(3):
            time.sleep(1.0)
            down.set()
            time.sleep(2.5)
            down.clear()

    cfg = GenerateConfig(out=str(tmp_path / "run"), seeds=SEEDS, teacher_url="", templates=templates,
                         num_instructions=60, concurrency=6, responses=3, constraints=0.5, structured="text")
    with FaultServer(script=flaky) as srv:
        cfg.teacher_url = srv.url
        t = threading.Thread(target=outages, daemon=True)
        t.start()
        stats = generate(cfg)
        t.join()
    assert stats["retries"] > 0
    _check_run(tmp_path / "run", 60)
    assert "teacher unreachable or failing" in capfd.readouterr().err

    # gone for good: the circuit breaker stops the run (no success anywhere for give_up_after)
    from generator import generate as generate_mod

    from generator.client import TeacherError

    monkeypatch.setattr(generate_mod, "ClientConfig",
                        lambda **kw: ClientConfig(**kw, give_up_after=2.0, max_retries=1000, backoff_max=0.2, rest_max=0.2))
    with FaultServer(default="500") as dead:
        cfg.teacher_url, cfg.num_instructions = dead.url, 80
        with pytest.raises(TeacherError, match="no teacher answered"):
            generate(cfg)
    _check_run(tmp_path / "run", 60)  # what was there is intact


def test_two_teachers_crash_and_come_back_mid_run(tmp_path, templates):  # noqa: F811
    """Two scripted teachers behind one `sprout generate`, each taken down (its port closed, as a
    crashed server's is) and brought back on the same port mid-run: A dies -> B carries the run;
    A comes back, B dies -> A carries it; A dies too -> no teacher at all, the run waits without
    ending or writing; A comes back -> the run finishes. Then the invariants. The real-vLLM
    version of this test is opt-in (two vLLM-CPU servers starve each other on 2 cores)."""
    script = Script()

    def paced(kind, req):  # slow enough that each phase sees requests, fast enough to finish
        time.sleep(0.03)
        return script(kind, req)

    out, target = tmp_path / "run", 150
    data = out / "data.jsonl"
    teachers = [FaultServer(script=paced).__enter__(), FaultServer(script=paced).__enter__()]
    ports = [int(t.url.rsplit(":", 1)[1].split("/")[0]) for t in teachers]
    served = lambda k: len(teachers[k].bodies)  # noqa: E731

    def crash(k: int) -> None:
        teachers[k].crash()

    def back(k: int) -> None:
        teachers[k] = FaultServer(script=paced, port=ports[k]).__enter__()

    urls = ",".join(t.url for t in teachers)
    proc = subprocess.Popen(_generate_cmd(urls, out, templates, target), env=ENV, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def carries(k: int) -> None:
        """Teacher k alone serves the run: it answers a dozen requests and records follow."""
        deadline = time.monotonic() + 120
        while served(k) < 12:
            assert proc.poll() is None and time.monotonic() < deadline, f"teacher {k} got no requests"
            time.sleep(0.05)
        _wait_lines(data, _lines(data) + 3, proc, 120)

    try:
        _wait_lines(data, 5, proc, 120)
        crash(0)  # B alone
        teachers[1].bodies.clear()
        carries(1)
        back(0)
        crash(1)  # the new A alone
        carries(0)
        crash(0)  # nobody: the run waits (the circuit breaker allows 300 s)
        mark = _settled(data)  # a group whose last reply came before the crash may still be written
        time.sleep(5)
        assert proc.poll() is None and _lines(data) == mark
        back(0)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "teacher unreachable or failing" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for t in teachers:
            t.__exit__(None, None, None)
    _check_run(out, target)
    assert json.loads((out / "stats.json").read_text())["retries"] > 0


def test_training_killed_at_random_steps_resumes_exactly(student, tmp_path):
    """SIGKILL of `sprout train` at random moments (some mid-checkpoint), each time resumed from
    the newest good checkpoint: the final adapter equals an uninterrupted run's."""
    import torch
    from safetensors.torch import load_file

    from tests.test_train import make_rows

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(24)))
    steps = 12

    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "trainer.cli", "train", "--data", str(data), "--out", str(out), "--model", student,
                "--max-steps", str(steps), "--save-every", "1", "--keep-checkpoints", "2", "--max-length", "48",
                "--lora-r", "4", "--lora-alpha", "8", "--batch-size", "4", "--eval-fraction", "0", "--warmup-ratio",
                "0", "--lr", "1e-3", *extra]

    def last_step(out: Path) -> int:
        try:
            lines = (out / "metrics.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return 0
        steps_seen = [0]
        for line in lines:
            try:
                steps_seen.append(int(json.loads(line).get("step", 0)))
            except ValueError:  # a line torn by the previous kill
                pass
        return max(steps_seen)

    ref = subprocess.run(cmd(tmp_path / "ref"), env=ENV, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    rng, out, kills = random.Random(3), tmp_path / "run", 0
    for _ in range(4):
        resume = ["--resume"] if any((out / "checkpoints").glob("step-*")) else ["--overwrite"]
        # The kill is triggered by progress, not by the clock: each launch is killed a random
        # moment (often mid-checkpoint, since every step saves) after it logs a step beyond
        # where it started, so a faster machine cannot finish before the kill lands.
        start = last_step(out) if resume == ["--resume"] else 0
        proc = subprocess.Popen(cmd(out, *resume), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while proc.poll() is None and last_step(out) <= start and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
    resume = ["--resume"] if any((out / "checkpoints").glob("step-*")) else ["--overwrite"]
    final = subprocess.run(cmd(out, *resume), env=ENV, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert kills >= 3
    a = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == list(range(1, steps + 1))  # each step logged once, across every kill


def _settled(path: Path, quiet: float = 2.0, limit: float = 60) -> int:
    """The line count once it has not changed for `quiet` seconds."""
    deadline = time.monotonic() + limit
    last, since = _lines(path), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        if _lines(path) != last:
            last, since = _lines(path), time.monotonic()
    return last


def _wait_lines(path: Path, wanted: int, proc: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while _lines(path) < wanted:
        assert proc.poll() is None, f"generate ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"no progress to {wanted} records in {limit:.0f} s"
        time.sleep(0.5)


def _gone(pgids: list[int], limit: float = 120) -> None:
    """Every process group listed has ended (waiting for the kernel to finish a SIGKILLed process)."""
    from generator.server import group_alive

    deadline = time.monotonic() + limit
    while any(map(group_alive, pgids)) and time.monotonic() < deadline:
        time.sleep(1)
    left = subprocess.run(["ps", "-eo", "pid,pgid,stat,etime,cmd"], capture_output=True, text=True).stdout
    assert not any(map(group_alive, pgids)), [ln for ln in left.splitlines() if ln.split()[1:2] and
                                              ln.split()[1].isdigit() and int(ln.split()[1]) in pgids]


@pytest.mark.vllm
@pytest.mark.timeout(1800)  # a hang guard: two vLLM starts and a few records each side of the crash on 2 cores
def test_real_vllm_teacher_crash_and_restart_mid_run(embedded_model, tmp_path):
    """The only teacher, a real vLLM server, is SIGKILLed mid-run (a crash: no clean shutdown,
    connections cut). The run waits -- no record is lost or torn, and it does not end -- until the
    server is back on its port, then writes new records; then it is stopped with SIGTERM (as a
    closed terminal would) and what it wrote is checked: whole valid lines, no duplicate, complete
    groups, stats equal to the files, retries counted, no server process left.

    Bounded by records, not by a target: how long the 135M teacher takes to reach a target is its
    yield, not the crash handling (in CI, 2026-11-27, its 6th magpie instruction took over 15
    minutes). Reaching a target exactly across kills is the scripted campaign's test above."""
    from generator.server import ServeConfig, VLLMServer, free_port

    port, pgids = free_port(), []
    server = VLLMServer(ServeConfig(port=port), log_path=tmp_path / "vllm-0.log").start()
    pgids.append(server.group.pgid)
    out = tmp_path / "run"
    data = out / "data.jsonl"
    cmd = [sys.executable, "-m", "trainer.cli", "generate", "--mode", "magpie", "--teacher-url",
           f"http://127.0.0.1:{port}/v1", "--out", str(out), "--num-instructions", "200", "--responses", "2",
           "--response-max-tokens", "96", "--concurrency", "8"]
    proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_lines(data, 2, proc, 600)
        os.killpg(server.group.pgid, signal.SIGKILL)  # the crash
        server.stop(grace=5)  # reaps what SIGKILL left
        _gone(pgids)
        mark = _settled(data)
        time.sleep(10)  # no teacher at all: the run waits (the circuit breaker allows 300 s)
        assert proc.poll() is None and _lines(data) == mark
        server = VLLMServer(ServeConfig(port=port), log_path=tmp_path / "vllm-1.log").start()
        pgids.append(server.group.pgid)
        _wait_lines(data, mark + 2, proc, 600)  # the run goes on with the restarted server
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "Traceback" not in err and "teacher unreachable or failing" in err
        assert "interrupted (SIGTERM)" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.stop()
    _gone(pgids)
    _check_records(out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["retries"] > 0


@pytest.mark.vllm
@pytest.mark.timeout(2400)  # a hang guard: four vLLM starts on 2 cores
@pytest.mark.skipif(os.environ.get("SPROUT_VLLM_CRASH_TEST") != "1", reason=(
    "opt-in (SPROUT_VLLM_CRASH_TEST=1): two vLLM-CPU servers on 2 cores -- a server restarted while the "
    "other one serves the run stalled in its start for 9+ minutes (2026-11-27), starved by the serving "
    "one's busy engine and worker; the one-server crash test above is in the slow tier"))
def test_real_vllm_teachers_crash_and_restart_mid_run(embedded_model, tmp_path):
    """Real vLLM teachers SIGKILLed mid-run (a crash: no clean shutdown, connections cut) and
    restarted on their ports, while one `sprout generate` uses both:
    A dies -> B carries the run; A restarts; B dies -> the restarted A carries it; A dies too ->
    no teacher at all, the run waits (the circuit breaker allows 300 s); A restarts -> the run
    finishes. Then the invariants: target reached exactly, no duplicate or torn line, complete
    groups, stats equal to the files, no server process left."""
    from generator.server import ServeConfig, VLLMServer, free_port

    ports = [free_port(), free_port()]
    assert ports[0] != ports[1]
    servers: dict[int, VLLMServer] = {}

    def start(k: int) -> None:
        servers[k] = VLLMServer(ServeConfig(port=ports[k]), log_path=tmp_path / f"vllm-{k}.log").start()

    killed: list[int] = []  # process groups of every server started, checked gone at the end

    def crash(k: int) -> None:
        pgid = servers[k].group.pgid
        os.killpg(pgid, signal.SIGKILL)
        servers.pop(k).stop(grace=5)  # reaps what SIGKILL left; a crash leaves nothing to stop
        killed.append(pgid)

    out, target = tmp_path / "run", 24
    data = out / "data.jsonl"
    urls = ",".join(f"http://127.0.0.1:{p}/v1" for p in ports)
    cmd = [sys.executable, "-m", "trainer.cli", "generate", "--mode", "magpie", "--teacher-url", urls,
           "--out", str(out), "--num-instructions", str(target), "--responses", "2",
           "--response-max-tokens", "96", "--concurrency", "8"]
    proc = None
    try:
        start(0)
        start(1)
        proc = subprocess.Popen(cmd, env=ENV, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        _wait_lines(data, 3, proc, 600)
        crash(0)  # B alone
        mark = _lines(data)
        _wait_lines(data, mark + 3, proc, 600)
        start(0)  # A back on its port
        crash(1)  # the restarted A alone
        mark = _lines(data)
        _wait_lines(data, mark + 3, proc, 600)
        crash(0)  # no teacher at all: the run must wait, not end
        mark = _lines(data)
        time.sleep(5)
        assert proc.poll() is None and _lines(data) == mark
        start(0)
        _, err = proc.communicate(timeout=1200)
        assert proc.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "teacher unreachable or failing" in err
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for k in list(servers):
            killed.append(servers[k].group.pgid)
            servers.pop(k).stop()
    # Nothing left running. A SIGKILLed vLLM-CPU engine worker was seen still exiting (state R, no
    # command line) more than 90 s after the kill, so this waits for the kernel, not for us.
    _gone(killed, limit=300)
    _check_run(out, target)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["retries"] > 0
