"""The model's RoPE, read off its own code: which module holds the frequencies, and whether the
model rotates half-split or interleaved pairs, over how many dims, per layer type. No table of
architectures: a probe vector is rotated by the model's ``apply_rotary_pos_emb`` and compared."""

from __future__ import annotations

import inspect
import sys

import torch
from transformers import PreTrainedModel

from longreach.engine.rotary import RotaryLayout
from longreach.models.config import UnsupportedModelError


def describe_rotary(model: PreTrainedModel) -> tuple[torch.nn.Module, dict[str | None, RotaryLayout], str]:
    """Find the model's rotary embedding and read its layout off the model's own RoPE code.

    Returns the rotary module, its layout per layer type (one entry, key None, for a model with
    one RoPE; Gemma 3 keeps one per layer type, with its own base) and the rope type ("default",
    "yarn", ...; "full_attention: linear, sliding_attention: default" per layer type).
    The layout (half-split or interleaved, rotary dims) is not looked up per architecture: a
    probe vector is rotated by the model's ``apply_rotary_pos_emb`` and compared with both
    layouts.
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"expected a transformers PreTrainedModel, got {type(model).__name__}")
    family = getattr(model.config, "model_type", type(model).__name__)
    rotaries = [m for m in model.modules() if _frequencies(m)]
    if not rotaries:
        raise UnsupportedModelError(
            f"{family} has no rotary embedding with an inv_freq buffer (RoPE), which LongReach methods "
            "re-rotate: absolute, learned or ALiBi positions (GPT-2, BLOOM, MPT) and RoPE kept as a "
            "precomputed sin/cos table (GPT-J, CodeGen) cannot be extended. Use a RoPE model such as "
            "Llama, Mistral, Qwen or Phi-3."
        )
    frequencies = {tuple((t, tuple(f.flatten().tolist())) for t, f in _frequencies(m).items()) for m in rotaries}
    if len(frequencies) > 1:
        raise UnsupportedModelError(
            f"{family} uses {len(frequencies)} different rotary embeddings (e.g. separate local and "
            "global RoPE); LongReach supports one RoPE per model."
        )
    rotary = rotaries[0]
    layer_types = list(_frequencies(rotary))
    rope_parameters = getattr(model.config, "rope_parameters", None) or {}
    if layer_types == [None]:
        rope_type = str(rope_parameters.get("rope_type", getattr(rotary, "rope_type", "default")))
    else:
        rope_type = ", ".join(f"{t}: {(rope_parameters.get(t) or {}).get('rope_type', 'default')}" for t in layer_types)
    if rope_type in ("mrope", "multimodal"):
        raise UnsupportedModelError(f"{family} uses multimodal RoPE ({rope_type}), which LongReach does not handle")
    chunk = getattr(model.config, "attention_chunk_size", None)
    if chunk is not None:
        raise UnsupportedModelError(
            f"{family} attends within chunks of {chunk} tokens in some layers (chunked attention), which "
            "LongReach does not implement"
        )
    if not getattr(type(model), "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{family} does not route attention through transformers' AttentionInterface, so LongReach "
            "cannot apply without patching its code; use a model whose class sets _supports_attention_backend"
        )
    return rotary, {t: _probe_layout(model, rotary, family, t) for t in layer_types}, rope_type


def _frequencies(module: torch.nn.Module) -> dict[str | None, torch.Tensor]:
    """A rotary embedding's inverse frequencies: {None: inv_freq}, or one per layer type (Gemma 3
    keeps ``{layer_type}_inv_freq`` buffers); empty for any other module."""
    if isinstance(getattr(module, "inv_freq", None), torch.Tensor):
        return {None: module.inv_freq}
    found = {t: getattr(module, f"{t}_inv_freq", None) for t in getattr(module, "layer_types", None) or ()}
    return {t: f for t, f in found.items() if isinstance(f, torch.Tensor)}


#: Families whose layers apply RoPE only where they have a sliding window (the others are NoPE).
ROPE_ONLY_WITH_SLIDING_WINDOW = {"cohere2"}


def rope_of(module: torch.nn.Module, layouts: dict[str | None, RotaryLayout]) -> tuple[str | None, RotaryLayout]:
    """The RoPE one attention module applies, as (memo key, layout): its layer type's (Gemma 3),
    the model's one (key None), or none (key "nope": the NoPE layers of SmolLM3, Llama 4 and
    Cohere2, and layer types without RoPE parameters), whose layout rotates no dims, so a plan
    only chooses which keys they see."""
    family = getattr(module.config, "model_type", None)
    kind = None
    if None not in layouts:
        kind = getattr(module, "layer_type", None) or module.config.layer_types[module.layer_idx]
    nope = (
        not getattr(module, "use_rope", True)
        or kind not in layouts
        or (family in ROPE_ONLY_WITH_SLIDING_WINDOW and getattr(module, "sliding_window", None) is None)
    )
    if nope:
        return "nope", RotaryLayout(inv_freq=torch.empty(0))
    return kind, layouts[kind]


def _probe_layout(model, rotary, family, layer_type: str | None) -> RotaryLayout:
    inv_freq = _frequencies(rotary)[layer_type].detach().to(torch.float32)
    by_type = () if layer_type is None else (layer_type,)
    scaling = getattr(rotary, "attention_scaling" if layer_type is None else f"{layer_type}_attention_scaling", 1.0)
    apply = None
    for module in attention_modules(model):
        apply = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
        if apply is not None:
            break
    if apply is None:
        raise UnsupportedModelError(f"{family}: no apply_rotary_pos_emb found next to its attention modules")
    dims = 2 * inv_freq.numel()
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 1, 1, dims, generator=generator).to(inv_freq.device)
    position = 7
    with torch.no_grad():
        cos, sin = rotary(probe, torch.tensor([[position]], device=inv_freq.device), *by_type)
        cos, sin = cos.to(torch.float32), sin.to(torch.float32)
        # apply_rotary_pos_emb(q, k, cos, sin), or (x, cos, sin) for one tensor (Gemma 4)
        one_tensor = list(inspect.signature(apply).parameters)[1] == "cos"
        expected = apply(probe, cos, sin) if one_tensor else apply(probe, probe, cos, sin)[0]
    expected = expected.to(torch.float32) / float(scaling or 1.0)
    delta = torch.tensor([float(position)], device=inv_freq.device)
    for interleaved in (False, True):
        layout = RotaryLayout(inv_freq=inv_freq, interleaved=interleaved)
        if torch.allclose(layout.rotate(probe, delta), expected, atol=1e-4, rtol=1e-4):
            return layout
    raise UnsupportedModelError(f"{family}: its RoPE is neither half-split nor interleaved; not supported")


def attention_modules(model) -> list[torch.nn.Module]:
    """The model's attention modules: every module that knows its layer index and config."""
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "config")]
