"""The student: base model + LoRA (peft), and the loss module the training loop calls.

`CausalLMLoss` runs the decoder, then the LM head only at the positions that have a label. On
instruction data half or more of the tokens are prompt, and the LM head of a small model is a big
share of its compute (SmolLM2-135M: 28M of 135M parameters, vocab 49k): projecting only the
supervised positions saves that work and the (batch x length x vocab) logits tensor, the largest
activation of the step. Models whose head does more than a projection (logit soft-capping or
scaling) go through the model's own forward instead.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from generator.errors import UserError
from trainer.format import IGNORE

# Config attributes that mean "the logits are not just lm_head(hidden)".
_HEAD_EXTRAS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale", "logits_scaling")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that supports it; fp32 on CPU, where bf16 autocast is 10-40x slower."""
    if name == "float32":
        return torch.float32
    if name == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def default_target_modules(model: nn.Module) -> list[str]:
    """Plain names of every linear layer in the decoder blocks (attention and MLP), not the head.

    Plain names (q_proj, ..., down_proj for Llama) are what vLLM maps adapters by."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    names = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
             if isinstance(mod, (nn.Linear, Conv1D)) and mod is not head and name}
    return sorted(names)


def load_student(model_path: str, device: torch.device, dtype: torch.dtype, *, lora_r: int, lora_alpha: int,
                 lora_dropout: float, target_modules: list[str] | None, gradient_checkpointing: bool,
                 init_adapter: str | None = None, load_in_4bit: bool = False):
    """(peft model on `device`, tokenizer, stop token ids). With `init_adapter` (a PEFT adapter
    folder, e.g. an SFT run's OUT/adapter) its weights are the trainable LoRA start and its own
    LoRA settings (rank, alpha, targets) apply.

    `load_in_4bit` (QLoRA, CUDA only): the frozen base is stored in 4-bit NF4 with double
    quantization and computes in bf16; the LoRA matrices stay full precision. The adapter saved
    from it is an ordinary PEFT adapter (LoRA weights and config only, nothing quantized), so it
    loads onto the bf16 base like any other."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:  # padding is masked out; any id will do
        tokenizer.pad_token = tokenizer.eos_token
    if load_in_4bit:
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                 bnb_4bit_compute_dtype=torch.bfloat16)
        # quantized on load, straight onto this process's GPU (a 4-bit model cannot be .to()-moved)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16, quantization_config=nf4,
                                                     device_map={"": device})
        # freezes the base, keeps norms and embeddings in fp32 for stable training, and turns on
        # gradient checkpointing when asked (the LoRA wrapping below keeps it)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device)
    model.config.use_cache = False  # no KV cache while training
    stop_ids = getattr(model.generation_config, "eos_token_id", None)
    stop_ids = set(stop_ids if isinstance(stop_ids, list) else [stop_ids] if stop_ids is not None else [])
    if init_adapter:
        try:
            model = PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise UserError(f"--init-adapter {init_adapter}: cannot load it onto this model ({e})") from None
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, tokenizer, stop_ids
    targets = list(target_modules) if target_modules else default_target_modules(model)
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM")
    try:
        model = get_peft_model(model, lora)
    except ValueError as e:  # e.g. "Target modules {...} not found in the base model"
        raise UserError(f"--target-modules {','.join(targets)}: {e}") from None
    if gradient_checkpointing:
        # Non-reentrant checkpointing needs no input grads and works under DDP.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer, stop_ids


def merge_onto_base(model_path: str, adapter_dir, dtype: torch.dtype) -> nn.Module:
    """The saved adapter merged into a fresh copy of the base in `dtype`, on the CPU. For a 4-bit
    run: merging into NF4 weights would round the LoRA delta away (and a 4-bit checkpoint is not what
    a server loads), so --merge merges into the bf16 base, as QLoRA's adapters are meant to be used."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


class CausalLMLoss(nn.Module):
    """forward(batch) -> (sum of token cross-entropies, number of supervised tokens).

    Returning the *sum* lets the caller normalise by the supervised tokens of the whole
    accumulated (and distributed) batch, so micro-batching never changes the loss. A module, not a
    function, so DistributedDataParallel can wrap it and sync the LoRA gradients."""

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        head = base.get_output_embeddings()
        plain_head = not any(getattr(base.config, k, None) not in (None, 1, 1.0) for k in _HEAD_EXTRAS)
        self.fast = decoder is not None and isinstance(head, nn.Linear) and plain_head
        self._parts = (decoder, head)  # a tuple: not registered twice as submodules

    def forward(self, input_ids, attention_mask, labels, **packed):
        """`packed`: position ids and cumulative lengths of a padding-free batch (trainer/packing.py)."""
        logits, targets = self._supervised_logits(input_ids, attention_mask, labels, **packed)
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        return loss, targets.numel()

    def supervised_logits(self, input_ids, attention_mask, labels):
        """(logits at the supervised positions (n, vocab), their target ids (n,)), positions in
        row-major order: every row's supervised tokens, row after row. DPO's entry point; under
        FSDP a second forward method (trainer/sharding.py), which is why forward() does not go
        through it: FSDP's forward hooks would run nested."""
        return self._supervised_logits(input_ids, attention_mask, labels)

    def _supervised_logits(self, input_ids, attention_mask, labels, **packed):
        targets = labels[:, 1:]
        keep = targets != IGNORE
        amp = (torch.autocast(input_ids.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
               else contextlib.nullcontext())
        with amp:
            if self.fast:
                decoder, head = self._parts
                hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **packed)
                logits = head(hidden.last_hidden_state[:, :-1][keep])
            else:
                logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                    **packed).logits
                logits = logits[:, :-1][keep]
        return logits, targets[keep]
