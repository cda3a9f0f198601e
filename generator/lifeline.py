"""Run a command so that it, and every process it starts, dies with the Sprout process that asked.

    python lifeline.py FD PARENT_PID GRACE -- CMD ARGS...

Started by generator.server.ProcessGroup as the leader of a new session (so Ctrl-C in the terminal
reaches Sprout, not vLLM). It runs CMD as its child inside that process group and watches:

- FD, the read end of a pipe whose only write end Sprout holds: when Sprout dies -- by any signal,
  SIGKILL included -- the kernel closes it and the read returns EOF at once;
- its parent pid (checked every half second), for the case where the write end leaked into a
  forked child that outlives Sprout;
- SIGTERM / SIGHUP / SIGINT sent to it (ProcessGroup.stop signals the whole group).

On any of these it sends SIGTERM to the whole group, gives CMD GRACE seconds to exit, then
SIGKILLs whatever is left of the group (vLLM's engine workers included). If CMD exits on its own,
its left-over processes are killed too and this exits with CMD's code.

This file is run by path, not imported, and uses only the standard library: it must start with
whatever interpreter and path Sprout has, and never import vLLM or torch.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys


def group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid`, from /proc (Linux); empty where /proc is absent."""
    pids = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return pids
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp ...
        if len(fields) > 2 and int(fields[2]) == pgid:
            pids.append(int(name))
    return pids


def kill_others(sig: int) -> None:
    """Signal every member of our group but us."""
    me = os.getpid()
    for pid in group_members(os.getpgid(0)):
        if pid != me:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[4] != "--":
        print("usage: lifeline.py FD PARENT_PID GRACE -- CMD...", file=sys.stderr)
        return 2
    fd, parent, grace, cmd = int(argv[1]), int(argv[2]), float(argv[3]), argv[5:]
    stop = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    child = subprocess.Popen(cmd)  # inherits our process group, stdout/stderr and environment
    code = None
    while code is None:
        code = child.poll()
        if code is not None:
            break
        if stop or os.getppid() != parent:
            break
        try:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready and os.read(fd, 1) == b"":  # EOF: the process holding the write end is gone
                break
        except InterruptedError:
            continue
    if code is None:  # told to stop, or Sprout died: take the group down
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            os.killpg(0, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            code = child.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            code = -signal.SIGKILL
    kill_others(signal.SIGKILL)  # engine workers and anything else CMD left behind
    try:
        child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
