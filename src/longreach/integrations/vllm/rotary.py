"""Each attention layer's RoPE, read off the model vLLM loaded: its rotary modules say how many
dims rotate, whether pairs are half-split (NeoX) or interleaved (GPT-J), and at which speeds. No
table of architectures: an attention layer uses the rotary module nearest to it in the model's
own module tree.

vLLM sizes a rotary module's cos/sin table for the trained length; a method serves longer
contexts, so :func:`read_rotaries` also lets the model's own code recompute the table for
``max_model_len`` positions (positions past the table would be read out of bounds).
"""

from __future__ import annotations

import torch

from longreach.engine.rotary import RotaryLayout
from longreach.integrations.vllm.settings import METHOD_ENV

#: Attention layer name (vLLM's ``layer_name``) -> its rotary layout, filled once the model is loaded.
LAYOUTS: dict[str, RotaryLayout] = {}


def read_rotaries(model: torch.nn.Module, max_model_len: int) -> dict[str, RotaryLayout]:
    """Record every attention layer's :class:`RotaryLayout` in :data:`LAYOUTS` (and return them),
    extending each rotary module's table to ``max_model_len`` positions.

    Raises ``ValueError`` for a model without RoPE, or with rotary modules LongReach cannot read
    (multimodal or position-dependent frequencies).
    """
    from vllm.model_executor.layers.attention import Attention
    from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbeddingBase

    # vLLM shares one rotary module between layers with the same settings: list it under every name.
    modules = [(n, m) for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, RotaryEmbeddingBase)]
    layouts: dict[int, RotaryLayout] = {}
    for _, module in modules:
        if id(module) not in layouts:
            layouts[id(module)] = _layout(module, max_model_len)
    rotaries = {name: layouts[id(module)] for name, module in modules}
    if not rotaries:
        raise ValueError(
            f"LongReach: {type(model).__name__} has no rotary embedding (RoPE), which LongReach methods re-rotate: "
            "absolute, learned or ALiBi positions (GPT-2, BLOOM, MPT) cannot be extended. Serve a RoPE model "
            f"(Llama, Mistral, Qwen, Phi-3, ...), or this one without {METHOD_ENV} (and longreach_method in "
            "--additional-config) within its trained length"
        )
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            found[module.layer_name] = _nearest(name, rotaries)
    LAYOUTS.update(found)
    return found


def _layout(module: torch.nn.Module, max_model_len: int) -> RotaryLayout:
    """The module's layout; its cos/sin table recomputed by its own code to cover ``max_model_len``."""
    table = getattr(module, "cos_sin_cache", None)
    if not isinstance(table, torch.Tensor) or table.dim() != 2:
        raise ValueError(
            f"LongReach: {type(module).__name__} keeps no cos/sin table by position (multimodal or dynamic RoPE), "
            "which the vLLM plugin cannot re-rotate"
        )
    if module.max_position_embeddings < max_model_len:
        module.max_position_embeddings = max_model_len
    exact = module._compute_cos_sin_cache().to(torch.float32)  # the model's own formula, in float32
    if exact.shape[0] < max_model_len:
        raise ValueError(
            f"LongReach: {type(module).__name__} computes RoPE for {exact.shape[0]} positions only, fewer than "
            f"max_model_len {max_model_len}"
        )
    module.cos_sin_cache = exact.to(table.device, table.dtype)
    half = module.rotary_dim // 2
    # Position 1's angles are the frequencies themselves (all below pi): scale-free, whatever the
    # table's magnitude (YaRN's mscale).
    inv_freq = torch.atan2(exact[1, half : 2 * half], exact[1, :half])
    return RotaryLayout(inv_freq=inv_freq.to(table.device), interleaved=not module.is_neox_style)


def _nearest(attention_name: str, rotaries: dict[str, RotaryLayout]) -> RotaryLayout:
    """The layout of the rotary module closest above ``attention_name`` in the module tree (a sibling
    such as ``self_attn.rotary_emb``, or one the whole model shares)."""
    path = attention_name.split(".")
    for depth in range(len(path) - 1, -1, -1):
        prefix = ".".join(path[:depth])
        candidates = [layout for name, layout in rotaries.items() if name.rpartition(".")[0] == prefix]
        if len({(tuple(c.inv_freq.tolist()), c.interleaved) for c in candidates}) > 1:
            raise ValueError(
                f"LongReach: {attention_name} has several different rotary embeddings beside it (e.g. local and "
                "global RoPE); the vLLM plugin supports one per attention layer"
            )
        if candidates:
            return candidates[0]
    raise ValueError(f"LongReach: no rotary embedding found for attention layer {attention_name}")
