"""Fault campaign (issue 11): what survives a kill, a crash, a power loss or a crafted input.

Fast tier: no vLLM. The server machinery is exercised with `sleep` children started through the
same ProcessGroup that VLLMServer uses; checkpoints with the 2-layer student from conftest.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from generator.errors import UserError
from generator.server import ProcessGroup, VLLMServer, ServeConfig, group_alive, stale_servers
from tests.fault_server import FaultServer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _wait_gone(pgid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return True
        time.sleep(0.05)
    return False


def _members(pgid: int) -> int:
    from generator.lifeline import group_members

    return len(group_members(pgid))


# -- 1. no orphaned servers -----------------------------------------------------------------------

PARENT = textwrap.dedent("""
    import signal, sys, time
    from generator.server import ProcessGroup
    # a plain command dies of SIGHUP even when the test runner was started under nohup
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # a "server" with a worker of its own, like vLLM's API process and engine core
    g = ProcessGroup(["sh", "-c", "sleep 300 & sleep 300; true"])
    print(g.pgid, flush=True)
    time.sleep(300)
""")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_server_group_dies_with_its_parent(sig):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        pgid = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while _members(pgid) < 3 and time.monotonic() < deadline:  # lifeline, sh, sleep (x2)
            time.sleep(0.05)
        assert _members(pgid) >= 3
        parent.send_signal(sig)
        parent.wait(timeout=10)
        assert _wait_gone(pgid), f"the server group outlived its parent's {sig.name}"
    finally:
        parent.kill()
        parent.wait()


def test_stop_ends_the_group_and_a_dead_command_takes_its_workers_along():
    g = ProcessGroup(["sh", "-c", "sleep 300 & sleep 300; true"])
    time.sleep(0.3)
    assert group_alive(g.pgid)
    g.stop(grace=5)
    assert not group_alive(g.pgid)
    # the command exits on its own (a crashed API server): its code comes back, its worker dies
    g = ProcessGroup(["sh", "-c", "sleep 300 & sleep 0.3; exit 3"])
    assert g.proc.wait(timeout=10) == 3
    assert _wait_gone(g.pgid)
    g.stop()


def test_stale_server_is_reported(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPROUT_HOME", str(tmp_path))
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)  # a server whose Sprout is gone
    gone = subprocess.Popen(["true"])
    gone.wait()
    try:
        folder = tmp_path / "run"
        folder.mkdir()
        (folder / f"vllm-{orphan.pid}.json").write_text(json.dumps(
            {"pgid": orphan.pid, "parent": gone.pid, "host": "127.0.0.1", "port": 8123, "log": "x.log"}))
        (folder / "vllm-999999999.json").write_text(json.dumps({"pgid": 999999999, "parent": 1}))
        (folder / f"vllm-{os.getpid()}.json").write_text(json.dumps({"pgid": os.getpgid(0), "parent": os.getpid()}))
        stale = stale_servers()
        assert [r["pgid"] for r in stale] == [orphan.pid]  # not the dead group, not a live Sprout's
        assert not (folder / "vllm-999999999.json").exists()  # a record of a gone group is cleaned up
        from generator.server import report_stale_servers

        report_stale_servers()
        assert f"kill -- -{orphan.pid}" in capsys.readouterr().err
    finally:
        orphan.kill()
        orphan.wait()


def test_generate_handles_sigterm_and_sighup_like_ctrl_c(tmp_path):
    """sprout generate blocked on a teacher: SIGTERM/SIGHUP unwind (exit 128+N), the run lock is
    released and the run stays resumable."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        out = tmp_path / sig.name
        with FaultServer(default="slow:60") as srv:
            proc = subprocess.Popen(
                [sys.executable, "-m", "trainer.cli", "generate", "--teacher-url", srv.url, "--teacher-model",
                 "fake-model", "--out", str(out), "--num-instructions", "3", "--structured", "text"],
                stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
            deadline = time.monotonic() + 60
            while not srv.requests and time.monotonic() < deadline:
                time.sleep(0.1)
            assert srv.requests, "generate never reached the teacher"
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + sig, err
        assert f"interrupted ({sig.name})" in err and "Traceback" not in err
        from generator.runs import RunLock

        RunLock(out).release()  # free again: the lock went with the process


def test_sigterm_during_bookkeeping_is_raised_once_the_group_is_counted(tmp_path):
    """A SIGTERM that lands between a group's write and its count would leave stats.json one
    short of data.jsonl: sprout's handler defers it to the end of the bookkeeping block."""
    from generator.interrupts import bookkeeping
    from trainer.cli import Terminated, handle_termination

    previous = handle_termination()
    done = []
    try:
        with pytest.raises(Terminated):
            with bookkeeping():
                done.append("written")
                os.kill(os.getpid(), signal.SIGTERM)  # Python runs the handler before the next line
                time.sleep(0.05)
                done.append("counted")
        assert done == ["written", "counted"]
        with pytest.raises(Terminated):  # outside a block it is raised where it lands
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
            done.append("after")  # never reached
        assert done == ["written", "counted"]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _StaticServer(VLLMServer):
    """VLLMServer's start/stop path with a stdlib HTTP server standing in for vLLM."""

    def __init__(self, root: Path, **kw):
        from generator.server import free_port

        super().__init__(ServeConfig(port=free_port(), **kw), log_path=root / "server.log")
        self.root = root

    def command(self, model_path: str):
        cmd, env = super().command(model_path)
        i = cmd.index("--hf-token")  # a secret flag a logged command line must not show
        serve = f"exec {sys.executable} -m http.server {self.cfg.port} --bind 127.0.0.1 --directory {self.root}"
        return ["sh", "-c", serve, "sh", *cmd[i:i + 2]], env


def test_vllm_server_records_itself_logs_no_key_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SPROUT_HOME", str(tmp_path / "home"))
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "models").write_text('{"data": []}')
    srv = _StaticServer(tmp_path, extra_args=["--hf-token", "sk-hf-secret"])
    srv.start("unused-model-path")  # no preflight: the model path is given
    try:
        records = list((tmp_path / "home" / "run").glob("vllm-*.json"))
        assert [json.loads(r.read_text())["pgid"] for r in records] == [srv.group.pgid]
        assert stale_servers() == []  # its Sprout (this process) is alive
        pgid = srv.group.pgid
    finally:
        srv.stop()
    assert not group_alive(pgid) and not list((tmp_path / "home" / "run").glob("vllm-*.json"))
    logged = (tmp_path / "server.log").read_text().splitlines()[0]
    assert logged.startswith("$ ") and "sk-hf-secret" not in logged and "--hf-token ***" in logged


def test_serve_api_key_stays_out_of_logs_and_command_line(tmp_path):
    srv = VLLMServer(ServeConfig(extra_args=["--api-key", "sk-serve-secret", "--seed", "1"]))
    cmd, env = srv.command("/models/m")
    assert "sk-serve-secret" not in " ".join(cmd) and env["VLLM_API_KEY"] == "sk-serve-secret"
    assert cmd[-2:] == ["--seed", "1"]
    cmd, env = VLLMServer(ServeConfig(extra_args=["--api-key=sk-2"])).command("/m")
    assert "sk-2" not in " ".join(cmd) and env["VLLM_API_KEY"] == "sk-2"
    from generator.redact import redact_command

    assert redact_command(["vllm", "--api-key", "K", "--hf-token=T"]) == ["vllm", "--api-key", "***", "--hf-token=***"]


# -- 2. demo --fresh deletes only its own folder ------------------------------------------------------

def test_fresh_refuses_a_foreign_folder_and_accepts_a_demo_or_empty_one(tmp_path):
    from trainer.demo import MARKER, prepare_out

    home = tmp_path / "home"
    (home / "documents").mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not made by sprout demo"):
        prepare_out(home, fresh=True)
    assert (home / "thesis.tex").read_text() == "years of work"
    prepare_out(home, fresh=False)  # resuming into an existing folder does not adopt it
    assert not (home / MARKER).exists()

    demo = tmp_path / "demo"
    prepare_out(demo, fresh=False)
    assert (demo / MARKER).is_file()
    (demo / "data").mkdir()
    prepare_out(demo, fresh=True)
    assert not (demo / "data").exists() and (demo / MARKER).is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_out(empty, fresh=True)
    assert (empty / MARKER).is_file()
    link = tmp_path / "link"
    link.symlink_to(home)
    with pytest.raises(UserError, match="refusing"):
        prepare_out(link, fresh=True)
    assert (home / "thesis.tex").exists()


# -- 3. one writer per output folder ------------------------------------------------------------------

def test_second_writer_of_a_run_dir_fails_at_once(tmp_path, capsys):
    from generator.gen_config import GenerateConfig
    from generator.runs import RunDir

    cfg = GenerateConfig(out=str(tmp_path / "run"))
    first = RunDir(cfg.out).open(cfg, {})
    t = time.monotonic()
    with pytest.raises(UserError, match=rf"another Sprout process \(pid {os.getpid()}\) is writing this run"):
        RunDir(cfg.out).open(cfg, {})
    assert time.monotonic() - t < 1
    first.close()
    RunDir(cfg.out).open(cfg, {}).close()  # free again after close

    # through the CLI: one line, exit 2
    from trainer.cli import main
    from generator.runs import RunLock

    with RunLock(cfg.out):
        assert main(["generate", "--out", cfg.out, "--teacher-url", "http://127.0.0.1:9/v1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is writing this run" in err[0]


def test_lock_dies_with_its_process(tmp_path):
    code = f"from generator.runs import RunLock; RunLock({str(tmp_path)!r}); print('held', flush=True); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    from generator.runs import RunLock

    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=rf"pid {holder.pid}"):
            RunLock(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).release()  # SIGKILL released it: nothing stale


def test_training_output_folder_is_locked(tmp_path):
    from generator.runs import RunLock
    from tests.test_train import tiny

    with RunLock(tmp_path / "out"):
        with pytest.raises(UserError, match="is writing this training output folder"):
            from trainer.train import train

            train(tiny(tmp_path / "no-data.jsonl", tmp_path / "out"))


def test_fsync_setting_is_validated(tmp_path):
    from generator.gen_config import GenerateConfig
    from generator.runs import RunDir

    cfg = GenerateConfig(out=str(tmp_path / "run"), fsync="sometimes")
    with pytest.raises(UserError, match="--fsync 'sometimes'"):
        cfg.validate()
    with pytest.raises(UserError, match="--fsync"):
        RunDir(cfg.out).open(cfg, {})
    cfg.fsync = "close"
    run = RunDir(cfg.out).open(cfg, {})
    run.write_group([{"instruction_id": "a", "num_instances": 1}])
    run.close()
    assert json.loads((tmp_path / "run" / "data.jsonl").read_text())["instruction_id"] == "a"


# -- 4 + 5. checkpoints: durable, validated, fallback, no pickle ----------------------------------------

@pytest.fixture(scope="module")
def checkpointed(student, tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 3 (kept), copied fresh per test."""
    from tests.test_train import make_rows, tiny
    from trainer.train import train

    root = tmp_path_factory.mktemp("ckpt")
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(12)))
    cfg = tiny(data, root / "out", model=student, max_steps=4, save_every=1, keep_checkpoints=2, max_length=48)
    train(cfg)
    return root, cfg


def _corrupt(ckpt: Path, how: str) -> None:
    if how == "empty state.json":
        (ckpt / "state.json").write_text("")
    elif how == "truncated optimizer.pt":
        data = (ckpt / "optimizer.pt").read_bytes()
        (ckpt / "optimizer.pt").write_bytes(data[: len(data) // 2])
    elif how == "empty adapter":
        (ckpt / "adapter" / "adapter_model.safetensors").write_bytes(b"")
    elif how == "empty rng":
        (ckpt / "rng-rank0.safetensors").write_bytes(b"")


DAMAGE = ["empty state.json", "truncated optimizer.pt", "empty adapter", "empty rng"]


@pytest.mark.parametrize("how", DAMAGE)
def test_each_kind_of_damage_is_detected_before_anything_is_applied(checkpointed, tmp_path, how):
    import shutil

    from trainer import checkpoint
    from trainer.dist import DistInfo

    root, _ = checkpointed
    good = root / "out" / "checkpoints" / "step-000003"
    assert checkpoint.read(good, DistInfo())["state"]["step"] == 3
    bad = tmp_path / "step-000003"
    shutil.copytree(good, bad)
    _corrupt(bad, how)
    with pytest.raises(ValueError, match=how.split()[-1].replace("rng", "rng-rank0")):
        checkpoint.read(bad, DistInfo())


@pytest.mark.parametrize("how", ["empty state.json", "truncated optimizer.pt"])
def test_resume_falls_back_past_a_damaged_checkpoint(checkpointed, tmp_path, capfd, how):
    import dataclasses
    import shutil

    from trainer.train import train

    root, cfg = checkpointed
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-000002", "step-000003"]
    _corrupt(ckpts[-1], how)
    with open(out / "metrics.jsonl", "a") as f:  # and a line torn by the same power loss
        f.write('{"step": 4, "loss": 1.2')
    capfd.readouterr()
    summary = train(dataclasses.replace(cfg, out=str(out), resume=True))
    err = capfd.readouterr().err
    assert "step-000003 is damaged" in err and "falling back to the older checkpoint" in err
    assert "resuming from" in err and "step-000002 (step 2)" in err
    assert summary["steps"] == 4
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "corrupt-step-000003" in names and "step-000003" in names  # set aside, then written again
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert steps == [1, 2, 3, 4]


def test_resume_with_every_checkpoint_damaged_is_a_user_error(checkpointed, tmp_path):
    import dataclasses
    import shutil

    from trainer.train import train

    root, cfg = checkpointed
    shutil.copytree(root / "out", tmp_path / "out")
    for ckpt in (tmp_path / "out" / "checkpoints").iterdir():
        _corrupt(ckpt, "empty state.json")
    with pytest.raises(UserError, match="no usable checkpoint.*step-000002: state.json unreadable"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "out"), resume=True))


def test_rng_state_roundtrips_without_pickle(tmp_path):
    import random

    import numpy as np

    from trainer.checkpoint import load_rng, save_rng, set_rng_state

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.standard_normal()  # a cached gaussian in NumPy's state
    save_rng(tmp_path / "rng.safetensors")
    expected = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(*load_rng(tmp_path / "rng.safetensors"))
    got = (random.random(), np.random.standard_normal(), np.random.random(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
    assert b"\x80\x04" not in (tmp_path / "rng.safetensors").read_bytes()[:64]  # not a pickle stream


def test_nothing_is_unpickled():
    """Every torch.load in the code base passes weights_only=True (no code runs from a crafted file)."""
    offenders = []
    for path in [*REPO.glob("generator/*.py"), *REPO.glob("trainer/*.py"), *REPO.glob("benchmarks/*.py"),
                 *REPO.glob("tests/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line and path.name != "test_faults.py":
                offenders.append(f"{path.name}:{n}")
            if "pickle.load" in line and path.name != "test_faults.py":
                offenders.append(f"{path.name}:{n}")
    assert not offenders


def test_metrics_reader_skips_a_torn_line(tmp_path):
    from trainer.metrics import read_metrics

    (tmp_path / "m.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1, "loss": 2.0}]


# -- 6. templates ------------------------------------------------------------------------------------

def _template(folder: Path, body: str, **env_kw):
    from generator.templates import Template, make_env

    path = folder / "classify.jinja"
    path.write_text("{# parser: yes_no #}\n" + body)
    return Template(path, make_env(folder, **env_kw))


def test_include_through_a_symlink_out_of_the_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0")
    folder = tmp_path / "prompts"
    folder.mkdir()
    (folder / "part.jinja").symlink_to(secret)
    (folder / "ok.jinja").write_text("fine")
    t = _template(folder, "{% block user %}{% include 'part.jinja' %}{% endblock %}")
    with pytest.raises(UserError, match=r"classify\.jinja.*outside the template folder"):
        t.render()
    t = _template(folder, "{% block user %}{% include 'ok.jinja' %}{% endblock %}")
    assert t.render().user == "fine"
    from generator.templates import Template, make_env

    (folder / "alpaca.jinja").symlink_to(secret)  # the template file itself
    with pytest.raises(UserError, match="outside the template folder"):
        Template(folder / "alpaca.jinja", make_env(folder))


def test_template_is_immutable_sandbox(tmp_path):
    t = _template(tmp_path, "{% block user %}{% set x = [1] %}{{ x.append(2) }}{% endblock %}")
    with pytest.raises(UserError, match="SecurityError"):
        t.render()


@pytest.mark.parametrize("body, what", [
    ("{% for i in range(20000) %}{{ 'x' * 100 }}{% endfor %}", "output over 1000000 characters"),
    ("{{ 'x' * 10**8 }}", "over the render bound"),
    ("{{ 'x'|center(1000000000) }}", "over the render bound"),
    ("{{ 'x'.ljust(1000000000) }}", "over the render bound"),
    ("{{ 10 ** 100000000 }}", "over the render bound"),
])
def test_render_output_is_bounded(tmp_path, body, what):
    t = _template(tmp_path, "{% block user %}" + body + "{% endblock %}")
    start = time.monotonic()
    with pytest.raises(UserError, match=rf"classify\.jinja.*{what}"):
        t.render()
    assert time.monotonic() - start < 5


def test_render_time_is_bounded(tmp_path):
    t = _template(tmp_path, "{% block user %}{% for i in range(100000) %}{% for j in range(100000) %}"
                            "{% endfor %}{% endfor %}done{% endblock %}", max_seconds=0.5)
    start = time.monotonic()
    with pytest.raises(UserError, match=r"classify\.jinja.*took over 0.5 s"):
        t.render()
    assert time.monotonic() - start < 3
    fine = _template(tmp_path, "{% block user %}{{ range(3)|list|length }} {{ range(3)|length }}{% endblock %}")
    assert fine.render().user == "3 3"


# -- 7. credentials --------------------------------------------------------------------------------

@pytest.mark.parametrize("url, expected", [
    ("https://user:secret@host:8000/v1", "https://host:8000/v1"),
    ("https://host/v1?api-key=K&api-version=2024", "https://host/v1?api-key=***&api-version=***"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ("https://u:p@a/v1,https://b/v1?k=v", "https://a/v1,https://b/v1?k=***"),
    ("https://token@host/v1", "https://host/v1"),
])
def test_redact_url(url, expected):
    from generator.redact import redact_url

    assert redact_url(url) == expected


def test_split_urls_keeps_a_query_string():
    from generator.client import split_urls

    assert split_urls("https://h/openai?api-version=2024-06") == ["https://h/openai/v1?api-version=2024-06"]
    assert split_urls("https://h/v1/?x=1") == ["https://h/v1?x=1"]


def test_environment_key_goes_only_where_pointed(monkeypatch):
    from generator.client import TeacherClient, api_key_from_env

    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret")
    monkeypatch.setenv("MY_KEY", "sk-mine")
    assert api_key_from_env(None, "http://evil.example/v1") == "EMPTY"
    assert api_key_from_env(None, "https://api.openai.com/v1") == "sk-env-secret"
    assert api_key_from_env(None, "https://api.openai.com/v1,http://evil.example/v1") == "EMPTY"
    assert api_key_from_env("OPENAI_API_KEY", "http://evil.example/v1") == "sk-env-secret"
    assert api_key_from_env("MY_KEY", "http://evil.example/v1") == "sk-mine"
    assert TeacherClient("http://evil.example/v1").endpoints[0].client.api_key == "EMPTY"

    with FaultServer() as srv:  # what actually goes over the wire to a foreign teacher

        async def ask():
            async with TeacherClient(srv.url, model="fake-model") as c:
                return await c.chat([{"role": "user", "content": "hi"}], max_tokens=1)

        out = asyncio.run(ask())
    assert out.texts and srv.seen and srv.seen[0][1] == "Bearer EMPTY"


def test_credentials_in_a_url_are_stored_nowhere(tmp_path, monkeypatch):
    from generator.client import TeacherClient, TeacherError
    from generator.gen_config import GenerateConfig
    from generator.runs import RunDir

    with FaultServer() as srv:
        url = srv.url.replace("http://", "http://alice:pw-secret@") + "?token=tok-secret"

        async def ask():
            async with TeacherClient(url, model="fake-model") as c:
                ok = await c.chat([{"role": "user", "content": "hi"}], max_tokens=1)
                with pytest.raises(TeacherError) as e:
                    await c.chat([{"role": "user", "content": "hi"}], max_tokens=1)
                return ok, str(e.value)

        srv.plan = ["ok", "400"]
        ok, message = asyncio.run(ask())
    for text in (ok.endpoint, message):
        assert "pw-secret" not in text and "tok-secret" not in text and "alice" not in text
    assert ok.endpoint.endswith("/v1?token=***")
    assert srv.seen[0][0] == "/v1/chat/completions?token=tok-secret"  # the query reached the teacher intact
    cfg = GenerateConfig(out=str(tmp_path / "run"), teacher_url=url)
    RunDir(cfg.out).open(cfg, {}).close()
    stored = (tmp_path / "run" / "config.yaml").read_text()
    assert "pw-secret" not in stored and "tok-secret" not in stored and "token=***" in stored
