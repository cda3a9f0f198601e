"""Prompt templates: Jinja files in a sandbox, one per stage.

A template file (`prompts/<stage>.jinja`) starts with a Jinja comment holding YAML metadata
(`parser:` how its reply is parsed, `description:`), then defines up to three blocks:
`system` and `user` (the chat form) and `completion` (the raw completion form; if absent it is the
system text, a blank line and the user text). See docs/templates.md for each stage's variables.

Safety: an `ImmutableSandboxedEnvironment` (no unsafe attribute access such as `__class__`, no
mutating lists or dicts), loading only from the template folder -- a symlink or `..` that resolves
outside it is refused -- and `StrictUndefined` so a missing variable is an error that names the
template and line. A render is bounded: over MAX_RENDER_CHARS of output or MAX_RENDER_SECONDS of
time it stops with a UserError naming the template. The clock is checked at every call, filter,
attribute access, `range` step, `*`/`**` and output chunk; string/list repetition, powers and
padding arguments (`center(10**9)`) that would blow past the size bound are refused before they
run. Teacher text reaches templates only as variable values, which Jinja never renders as template
code.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from generator.errors import UserError
from generator.resources import data_dir

STAGES = ("alpaca", "bootstrap", "classify", "instances_input_first", "instances_output_first", "respond",
          "followup")
_META = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.S)
MAX_RENDER_CHARS = 1_000_000  # a prompt is a few KB; a megabyte is a runaway loop
MAX_RENDER_SECONDS = 5.0


class RenderLimit(SecurityError):
    """A render went over its output or time bound."""


class FolderLoader(jinja2.FileSystemLoader):
    """FileSystemLoader that refuses a file resolving outside its folder (through a symlink):
    an `{% include %}` of a link to /etc/passwd must not read /etc/passwd."""

    def get_source(self, environment, template):
        source, filename, uptodate = super().get_source(environment, template)
        real = os.path.realpath(filename)
        if not any(os.path.commonpath([real, os.path.realpath(f)]) == os.path.realpath(f) for f in self.searchpath):
            raise jinja2.TemplateNotFound(template, f"{template!r} resolves to {real}, outside the template "
                                          f"folder {', '.join(map(str, self.searchpath))}; symlinks out of it are refused")
        return source, filename, uptodate


class _TimedRange:
    """range() for templates: the sandbox's bounded range, checking the render clock as it goes."""

    def __init__(self, env: "BoundedSandbox", r: range):
        self.env, self.r = env, r

    def __len__(self) -> int:
        return len(self.r)

    def __iter__(self):
        for i, x in enumerate(self.r):
            if i % 1024 == 0:
                self.env.tick()
            yield x


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The sandbox with a time and size bound on each render (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, *args, max_chars: int = MAX_RENDER_CHARS, max_seconds: float = MAX_RENDER_SECONDS, **kw):
        super().__init__(*args, **kw)
        self.max_chars, self.max_seconds = max_chars, max_seconds
        self.deadline = float("inf")  # set by Template.render; renders run one at a time per thread
        self.globals.pop("lipsum", None)  # lipsum(n=10**9) is a bomb with no use in a prompt
        self.globals["range"] = self._range
        self.filters = {name: self._guard(f) for name, f in self.filters.items()}

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(f"rendering took over {self.max_seconds:g} s; is there a runaway loop?")

    def _check_size(self, value):
        if isinstance(value, (str, list, tuple)) and len(value) > self.max_chars:
            raise RenderLimit(f"a value of over {self.max_chars} characters/items; prompts are bounded")
        return value

    def _check_args(self, args, kwargs) -> None:
        for a in (*args, *kwargs.values()):
            if isinstance(a, int) and not isinstance(a, bool) and abs(a) > self.max_chars:
                raise RenderLimit(f"argument {a} is over the render bound of {self.max_chars}")

    def _range(self, *args):
        return _TimedRange(self, safe_range(*args))

    def _guard(self, f):
        @functools.wraps(f)  # keeps jinja_pass_arg (pass_context etc.)
        def guarded(*args, **kwargs):
            self.tick()
            self._check_args(args[1:], kwargs)  # args[0] is the value (or context / environment)
            return self._check_size(f(*args, **kwargs))
        return guarded

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's signature)
        __self.tick()
        if isinstance(getattr(__obj, "__self__", None), str):  # "x".ljust(10**9)
            __self._check_args(args, kwargs)
        return __self._check_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator, left, right):
        self.tick()
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > self.max_chars:
                    raise RenderLimit(f"repeating a value {n} times is over the render bound")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
            if right * abs(left).bit_length() > 64 * self.max_chars:
                raise RenderLimit(f"{left} ** {right} is over the render bound")
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj, attribute):
        self.tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        self.tick()
        return super().getitem(obj, argument)


@dataclass
class Prompt:
    system: str
    user: str
    completion: str

    def messages(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return msgs + [{"role": "user", "content": self.user}]


class Template:
    def __init__(self, path: Path, env: BoundedSandbox):
        self.path = path
        self.name = path.stem
        try:  # through the loader, which refuses a symlink out of the folder
            source = env.loader.get_source(env, path.name)[0]
        except jinja2.TemplateNotFound as e:
            raise UserError(f"{path}: {e.message}") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                            "save the template as UTF-8") from None
        self.sha256 = hashlib.sha256(source.encode()).hexdigest()
        m = _META.match(source)
        try:
            self.meta = (yaml.safe_load(m.group(1).strip()) if m else None) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path} line 1: the metadata comment is not valid YAML ({e})") from None
        if not isinstance(self.meta, dict) or "parser" not in self.meta:
            raise UserError(f"{path} line 1: start the template with a comment like "
                            "{# parser: numbered_instructions #} naming how its reply is parsed")
        self.parser = str(self.meta["parser"])
        try:
            self.tmpl = env.get_template(path.name)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"{path} line {e.lineno}: template syntax error: {e.message}") from None
        except jinja2.TemplateNotFound as e:
            raise UserError(f"{path}: {e.message}") from None
        if "user" not in self.tmpl.blocks and "completion" not in self.tmpl.blocks:
            raise UserError(f"{path}: define a {{% block user %}} (chat) or {{% block completion %}} (raw)")

    def _block(self, name: str, ctx, budget: list[int]) -> str:
        if name not in self.tmpl.blocks:
            return ""
        env, parts = self.tmpl.environment, []
        for chunk in self.tmpl.blocks[name](ctx):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise RenderLimit(f"output over {env.max_chars} characters; is there a runaway loop?")
            env.tick()
            parts.append(chunk)
        return "".join(parts).strip("\n")

    def render(self, **variables) -> Prompt:
        env = self.tmpl.environment
        env.deadline = time.monotonic() + env.max_seconds
        budget = [env.max_chars]  # all blocks of one render share it
        try:
            try:
                ctx = self.tmpl.new_context(variables)
                system, user = self._block("system", ctx, budget), self._block("user", ctx, budget)
                completion = self._block("completion", ctx, budget) or (f"{system}\n\n{user}" if system else user)
            except Exception:
                # rendering blocks directly skips Jinja's traceback rewriting; ask for it, so
                # frames carry template line numbers
                self.tmpl.environment.handle_exception()
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError, jinja2.TemplateError, TypeError,
                MemoryError, ArithmeticError, RecursionError, ValueError, LookupError, AttributeError) as e:
            # an error raised while rendering is the template's (1/0, a bad index, int("x")...)
            raise UserError(f"{self.path} line {self._error_line(e)}: {type(e).__name__}: {e}") from None
        finally:
            env.deadline = float("inf")
        return Prompt(system, user or completion, completion)

    def _error_line(self, err: BaseException) -> str:
        # Jinja rewrites tracebacks so that frames in template code carry the template's file
        # name and line number; the last such frame is where rendering failed.
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == str(self.path)]
        return str(lines[-1]) if lines else "?"


def make_env(folder: Path, max_chars: int = MAX_RENDER_CHARS, max_seconds: float = MAX_RENDER_SECONDS
             ) -> BoundedSandbox:
    return BoundedSandbox(loader=FolderLoader(str(folder)), undefined=jinja2.StrictUndefined,
                          trim_blocks=True, lstrip_blocks=True, autoescape=False,
                          max_chars=max_chars, max_seconds=max_seconds)


def load_templates(templates_dir: str | Path | None = None, overrides: dict[str, str] | None = None
                   ) -> dict[str, Template]:
    """Every stage's template: from `templates_dir` (default: the shipped prompts/), with single
    stages replaced by `overrides` {stage: path}. A stage missing from a user folder falls back to ours."""
    ours = data_dir("prompts")
    folders = [Path(templates_dir)] if templates_dir else []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"--templates {folder}: not a folder")
    templates: dict[str, Template] = {}
    for stage in STAGES:
        path = (overrides or {}).get(stage)
        if path:
            path = Path(path)
            if not path.is_file():
                raise UserError(f"--template {stage}={path}: file not found")
        else:
            path = next((f / f"{stage}.jinja" for f in folders if (f / f"{stage}.jinja").is_file()),
                        ours / f"{stage}.jinja")
        templates[stage] = check_parser(Template(path, make_env(path.parent)), stage)
    return templates


def check_parser(t: "Template", stage: str) -> "Template":
    """Refuse, before any request, a parser that is unknown or that does not fit `stage`."""
    from generator.parsing import PARSERS, STAGE_PARSERS

    if t.parser not in PARSERS:
        raise UserError(f"{t.path} line 1: unknown parser {t.parser!r}; known: {', '.join(sorted(PARSERS))}")
    fits = STAGE_PARSERS.get(stage)
    if fits is not None and t.parser not in fits:
        raise UserError(f"{t.path} line 1: parser {t.parser!r} does not fit the {stage} stage "
                        f"(it takes {', '.join(sorted(fits))}); see docs/templates.md")
    return t
