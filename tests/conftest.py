"""Shared fixtures: the embedded model and ONE real vLLM server per test session.

Set SPROUT_TEST_TEACHER_URL=http://127.0.0.1:PORT/v1 to reuse a server you already run (handy
while developing); otherwise the first test that needs it starts one (~35-75 s on 2 cores).
"""

from __future__ import annotations

import os

import pytest

from generator.models import embedded_model_dir


@pytest.fixture(scope="session")
def embedded_model() -> str:
    return str(embedded_model_dir())


@pytest.fixture(scope="session")
def student(embedded_model, tmp_path_factory) -> str:
    """The embedded model cut to its first 2 decoder layers, saved as an HF folder: real layers
    and tokenizer, a fraction of the training cost."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("student2")
    AutoModelForCausalLM.from_pretrained(embedded_model, num_hidden_layers=2, dtype=torch.float32).save_pretrained(path)
    AutoTokenizer.from_pretrained(embedded_model).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def student_without_template(student, tmp_path_factory) -> str:
    """The 2-layer student with its chat template removed, as a base model ships: trained on the
    Alpaca prompt."""
    import json
    import shutil

    path = tmp_path_factory.mktemp("student2-base")
    shutil.copytree(student, path, dirs_exist_ok=True)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = path / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    from transformers import AutoTokenizer

    assert not AutoTokenizer.from_pretrained(str(path)).chat_template
    return str(path)


class _Teacher:
    def __init__(self, base_url: str, model: str, server=None):
        self.base_url, self.model, self.server = base_url, model, server


@pytest.fixture(scope="session")
def vllm_teacher(embedded_model, tmp_path_factory):
    """A running vLLM server on the embedded model: `.base_url`, `.model`."""
    url = os.environ.get("SPROUT_TEST_TEACHER_URL")
    if url:
        from generator.models import EMBEDDED_NAME

        yield _Teacher(url.rstrip("/"), os.environ.get("SPROUT_TEST_TEACHER_MODEL", EMBEDDED_NAME))
        return
    from generator.server import ServeConfig, VLLMServer, free_port

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with VLLMServer(ServeConfig(port=free_port()), log_path=log) as srv:
        yield _Teacher(srv.base_url, srv.model_name, srv)


def pytest_collection_modifyitems(config, items):
    """One rule for the second tier: anything that needs a real vLLM server (the `vllm_teacher`
    fixture or the `vllm` marker) is also `slow`, so the default run never starts one."""
    for item in items:
        if "vllm_teacher" in getattr(item, "fixturenames", ()) or item.get_closest_marker("vllm"):
            item.add_marker(pytest.mark.slow)
