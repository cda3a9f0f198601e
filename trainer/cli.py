"""`sprout`: one command line for the whole job. It lives in trainer/ because it names both packages:
generator/ never imports trainer/ (tests/test_layering.py), trainer/ builds on generator/. Each subcommand fills its stage's config dataclass
from `--config FILE.yaml` and then the flags given (flags win), and imports its stage lazily so
`sprout --help` stays fast."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import textwrap

from generator.errors import UserError
from generator.interrupts import interrupt

EXAMPLES = {
    "serve": "sprout serve --port 8000 --lora student=runs/train/adapter -- --tensor-parallel-size 2",
    "generate": "sprout generate --seeds seeds/seed_tasks.jsonl --out runs/gen1 --num-instructions 200",
    "train": "sprout train --data runs/gen1 --out runs/train1 --max-steps 100",
    "eval": "sprout eval --adapter runs/train1/adapter --eval-set seeds/eval_set.jsonl --out runs/eval1",
    "demo": "sprout demo --quick",
    "report": "sprout report runs/gen1 --train runs/train1 --eval runs/eval1 --out report.html",
    "export": "sprout export runs/gen1 --format messages --out data.jsonl",
    "compare": "sprout compare runs/gen1 runs/gen2",
    "dedup": "sprout dedup in.jsonl out.jsonl --threshold 0.7",
    "score": "sprout score alpaca_data.json --out scored.jsonl --score verifiers,judge --judge-url "
             "http://127.0.0.1:8000/v1 --min-score 7",
}

HELP = {
    "serve": "start a vLLM OpenAI-compatible teacher server and keep it up until Ctrl-C",
    "generate": "expand seed tasks into an instruction dataset through a teacher model",
    "train": "LoRA-tune a student model on an instruction dataset",
    "eval": "compare base and tuned student: reference loss, ROUGE-L, judge win rate",
    "demo": "the whole job on the embedded model: seeds -> dataset -> tuned student -> report",
    "report": "one static HTML report of a generation run (and training / eval)",
    "export": "export a run's dataset as Alpaca JSONL, chat messages, HF datasets, parquet or preference pairs",
    "compare": "compare two generation runs: counts, lengths, diversity, overlap",
    "dedup": "drop near-duplicate instructions (ROUGE-L) from an existing dataset",
    "score": "score and filter any dataset's responses: verifiers, LLM judge rating, reward model",
}


NO_CONFIG = {"export", "compare"}  # a few flags each, no config dataclass: --config would be ignored


def _sub(subs, name: str) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=HELP[name], description=HELP[name] + ".",
                        epilog="example:\n  " + EXAMPLES[name], formatter_class=argparse.RawDescriptionHelpFormatter)
    if name not in NO_CONFIG:
        p.add_argument("--config", metavar="FILE.yaml", help="YAML file with the same settings as the flags (flags win)")
    return p


def _add_serve(subs) -> None:
    from generator.config import add_flags
    from generator.server import ServeConfig

    p = _sub(subs, "serve")
    add_flags(p, ServeConfig)
    p.add_argument("extra_args", nargs=argparse.REMAINDER, help="after --: arguments passed to vLLM unchanged")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from generator.config import load_config
    from generator.server import ServeConfig, VLLMServer

    extra = [a for a in (args.extra_args or []) if a != "--"] or None
    cfg = load_config(ServeConfig, args.config, {**vars(args), "extra_args": extra})
    _student_chat_template(cfg)
    srv = VLLMServer(cfg)
    model_path = srv.preflight()
    print(f"starting vLLM on {cfg.host}:{cfg.port} (log: {srv.log_path})", file=sys.stderr, flush=True)
    try:
        srv.start(model_path)
        print(f"teacher ready: {srv.base_url}  model: {srv.model_name}", flush=True)
        srv.proc.wait()
        raise UserError(f"vLLM exited with code {srv.proc.returncode}; log {srv.log_path}:\n{srv.log_tail()}")
    except KeyboardInterrupt:
        print("stopping vLLM", file=sys.stderr, flush=True)
        return 0
    finally:
        srv.stop()


def _student_chat_template(cfg) -> None:
    """A LoRA student trained on the Alpaca prompt carries it as a chat template: serve it as
    vLLM's (trainer.format.chat_template_args), unless the user chose one."""
    from generator.server import parse_lora
    from trainer.format import chat_template_args

    if any(a.split("=", 1)[0] == "--chat-template" for a in cfg.extra_args):
        return
    args = chat_template_args(path for _, path, _ in parse_lora(cfg.lora))
    if args:
        cfg.extra_args = [*cfg.extra_args, *args]
        print("serving the adapter's training prompt as the chat template (its base model has none)",
              file=sys.stderr, flush=True)


def _lazy(name: str, module: str, adder: str):
    """Subcommands whose flags and handler live in their stage module."""

    def add(subs):
        import importlib

        mod = importlib.import_module(module)
        p = _sub(subs, name)
        getattr(mod, adder)(p)

    return add


SUBCOMMANDS = {
    "serve": _add_serve,
    "generate": _lazy("generate", "generator.generate", "add_generate_args"),
    "train": _lazy("train", "trainer.train", "add_train_args"),
    "eval": _lazy("eval", "trainer.evaluate", "add_eval_args"),
    "demo": _lazy("demo", "trainer.demo", "add_demo_args"),
    "export": _lazy("export", "generator.export", "add_export_args"),
    "compare": _lazy("compare", "generator.export", "add_compare_args"),
    "dedup": _lazy("dedup", "generator.dedup", "add_dedup_args"),
    "score": _lazy("score", "generator.score", "add_score_args"),
    "report": _lazy("report", "trainer.report", "add_report_args"),
}


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sprout",
        description=textwrap.dedent("""\
            Sprout: seed instructions -> teacher-generated dataset (vLLM) -> LoRA-tuned student.
            Every stage (all but export and compare) takes --config FILE.yaml with the same
            settings as its flags."""),
        epilog="commands:\n" + "\n".join(f"  {k:<9} {v}" for k, v in HELP.items()) +
               "\n\nstart here:  sprout demo --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, add in SUBCOMMANDS.items():
        if commands is None or name in commands:
            add(subs)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a closed SSH session): unwinds like Ctrl-C, so every `finally` runs --
    servers stopped, files flushed, locks released."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum, frame):
    interrupt(Terminated(signum))  # now, or once the record group being written is counted


def handle_termination() -> dict:
    """SIGTERM and SIGHUP behave like Ctrl-C (main thread only, where Python delivers signals);
    returns the previous handlers."""
    return {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}


_FULL = {errno.ENOSPC, errno.EDQUOT}
_PATH_MISTAKES = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EEXIST,
                  errno.ENAMETOOLONG}


def _os_error_line(e: OSError) -> str | None:
    """One line for the file-system errors a user can act on; None for anything else (a bug)."""
    where = e.filename or "a file"
    if e.errno in _FULL:
        return (f"disk full while writing {where}; every record written before is kept -- free space "
                "and rerun the same command to resume")
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
        from pathlib import Path

        blocker = next((p for p in [Path(where), *Path(where).parents] if p.is_file()), None)
        if blocker is not None:
            return f"{blocker} is a file, where a folder is needed for {where}; choose another path"
    if e.errno in _PATH_MISTAKES and e.filename:
        return f"{where}: {e.strerror}; check the path (--out, --data, --seeds ...) and its permissions"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the subcommand asked for: the others may import heavy libraries.
    wanted = [a for a in argv if a in SUBCOMMANDS][:1] or None
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if not argv else 2
    import threading

    previous = handle_termination() if threading.current_thread() is threading.main_thread() else {}
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"sprout {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        line = _os_error_line(e)
        if line is None:
            raise
        print(f"sprout {args.command}: error: {line}", file=sys.stderr)
        return 1 if e.errno in _FULL else 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    finally:  # main() may be called in-process (tests, notebooks): leave the handlers as found
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
