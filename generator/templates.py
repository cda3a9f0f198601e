"""Prompt templates: Jinja files in a sandbox, one per stage.

A template file (`prompts/<stage>.jinja`) starts with a Jinja comment holding YAML metadata
(`parser:` how its reply is parsed, `description:`), then defines up to three blocks:
`system` and `user` (the chat form) and `completion` (the raw completion form; if absent it is the
system text, a blank line and the user text). See docs/templates.md for each stage's variables.

Safety: a `SandboxedEnvironment` (no unsafe attribute access such as `__class__`), loading only
from the template folder, and `StrictUndefined` so a missing variable is an error that names the
template and line. Teacher text reaches templates only as variable values, which Jinja never
renders as template code.
"""

from __future__ import annotations

import hashlib
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from generator.errors import UserError
from generator.resources import data_dir

STAGES = ("alpaca", "bootstrap", "classify", "instances_input_first", "instances_output_first", "respond")
_META = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.S)


@dataclass
class Prompt:
    system: str
    user: str
    completion: str

    def messages(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system.strip() else []
        return msgs + [{"role": "user", "content": self.user}]


class Template:
    def __init__(self, path: Path, env: SandboxedEnvironment):
        self.path = path
        self.name = path.stem
        source = path.read_text(encoding="utf-8")
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
        if "user" not in self.tmpl.blocks and "completion" not in self.tmpl.blocks:
            raise UserError(f"{path}: define a {{% block user %}} (chat) or {{% block completion %}} (raw)")

    def _block(self, name: str, ctx) -> str:
        if name not in self.tmpl.blocks:
            return ""
        return "".join(self.tmpl.blocks[name](ctx)).strip("\n")

    def render(self, **variables) -> Prompt:
        try:
            try:
                ctx = self.tmpl.new_context(variables)
                system, user = self._block("system", ctx), self._block("user", ctx)
                completion = self._block("completion", ctx) or (f"{system}\n\n{user}" if system else user)
            except Exception:
                # rendering blocks directly skips Jinja's traceback rewriting; ask for it, so
                # frames carry template line numbers
                self.tmpl.environment.handle_exception()
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError, jinja2.TemplateError, TypeError) as e:
            raise UserError(f"{self.path} line {self._error_line(e)}: {type(e).__name__}: {e}") from None
        return Prompt(system, user or completion, completion)

    def _error_line(self, err: BaseException) -> str:
        # Jinja rewrites tracebacks so that frames in template code carry the template's file
        # name and line number; the last such frame is where rendering failed.
        lines = [f.lineno for f in traceback.extract_tb(err.__traceback__) if f.filename == str(self.path)]
        return str(lines[-1]) if lines else "?"


def make_env(folder: Path) -> SandboxedEnvironment:
    return SandboxedEnvironment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                                trim_blocks=True, lstrip_blocks=True, autoescape=False)


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
        templates[stage] = Template(path, make_env(path.parent))
    return templates
