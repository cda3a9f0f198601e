"""`sprout serve`: bad input gives one clear line and exit code 2; a real server with a LoRA
adapter answers as model `student`; SIGTERM leaves no vLLM process behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from generator import server as server_mod
from trainer.cli import main
from generator.client import ClientConfig, TeacherClient
from generator.errors import UserError
from generator.server import ServeConfig, VLLMServer, free_port


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert err.startswith("sprout serve: error:"), err
    return err


def test_missing_model_path(capsys):
    assert main(["serve", "--model", "/no/such/model", "--port", str(free_port())]) == 2
    assert "/no/such/model" in _one_line_error(capsys)


def test_folder_that_is_not_a_model(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path), "--port", str(free_port())]) == 2
    assert "no config.json" in _one_line_error(capsys)


def test_port_in_use(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = _one_line_error(capsys)
    assert f"port {port}" in err and "--port" in err


def test_vllm_not_installed(monkeypatch, capsys):
    monkeypatch.setattr(server_mod, "vllm_installed", lambda: False)
    assert main(["serve", "--port", str(free_port())]) == 2
    assert "vLLM is not installed" in _one_line_error(capsys)


def test_bad_lora_spec(tmp_path, capsys):
    assert main(["serve", "--port", str(free_port()), "--lora", f"student={tmp_path}"]) == 2
    assert "adapter_config.json" in _one_line_error(capsys)


def test_yaml_config_and_flags_merge(tmp_path):
    from generator.config import load_config

    cfg_file = tmp_path / "serve.yaml"
    cfg_file.write_text("port: 9001\nmax-model-len: 1024\nhost: 0.0.0.0\n")
    cfg = load_config(ServeConfig, cfg_file, {"port": 9002, "host": None})
    assert (cfg.port, cfg.max_model_len, cfg.host) == (9002, 1024, "0.0.0.0")


def test_server_command_passes_lora_and_extra_args(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 32}')
    srv = VLLMServer(ServeConfig(lora=[f"student={tmp_path}"], extra_args=["--tensor-parallel-size", "2"]))
    cmd, env = srv.command("/models/m")
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(cmd)
    assert f"--enable-lora --max-lora-rank 32 --lora-modules student={tmp_path}" in joined
    assert joined.endswith("--tensor-parallel-size 2")
    assert env["VLLM_CACHE_ROOT"].startswith(str(server_mod.sprout_home()))


@pytest.mark.parametrize("rank, slot", [(1, 1), (4, 8), (8, 8), (12, 16), (64, 64), (300, 320)])
def test_lora_rank_rounds_up_to_a_slot_vllm_accepts(tmp_path, rank, slot):
    # vLLM 0.32 refuses --max-lora-rank 4 (it takes 1, 8, 16, ...): a rank-4 adapter could not be served
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank}))
    cmd, _ = VLLMServer(ServeConfig(lora=[f"s={tmp_path}"])).command("/models/m")
    assert cmd[cmd.index("--max-lora-rank") + 1] == str(slot)


def test_lora_rank_above_vllms_largest_is_a_clear_error(tmp_path):
    (tmp_path / "adapter_config.json").write_text('{"r": 1024}')
    with pytest.raises(UserError, match="above vLLM's largest LoRA rank"):
        VLLMServer(ServeConfig(lora=[f"s={tmp_path}"])).command("/models/m")


def _tiny_adapter(model_dir: str, out: Path) -> Path:
    """An untrained LoRA adapter (peft initialises B to zero): servable, made in seconds."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(out)
    return out


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.vllm
def test_sprout_serve_lora_and_sigterm_leaves_no_process(embedded_model, tmp_path):
    adapter = _tiny_adapter(embedded_model, tmp_path / "adapter")
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "serve", "--port", str(port),
                             "--lora", f"student={adapter}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "sprout serve exited early:\n" + "".join(lines)
            lines.append(line)
            if line.startswith("teacher ready:"):
                break
        url = f"http://127.0.0.1:{port}/v1"
        assert url in lines[-1]

        async def ask():
            async with TeacherClient(url, model="student", cfg=ClientConfig(timeout=120)) as c:
                return await c.chat([{"role": "user", "content": "Say hello."}], max_tokens=8)
        out = asyncio.run(ask())
        assert out.texts[0].strip() and out.model == "student"

        # the vLLM API process is the leader of its own process group; find it by its port
        pgids = set()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"vllm.entrypoints.openai.api_server" in cmd and str(port).encode() in cmd:
                pgids.add(os.getpgid(int(pid)))
        assert len(pgids) == 1
        (pgid,) = pgids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not _group_alive(pgid), "vLLM processes survived sprout serve's SIGTERM"
    finally:
        if proc.poll() is None:
            proc.kill()
