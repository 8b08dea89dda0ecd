"""The RoPE-scaling baselines (linear, dynamic NTK, YaRN) through the model's own rope parameters.

Nothing is re-implemented: the model's config gets the scaled ``rope_parameters`` and its rotary
embeddings recompute their frequencies with transformers' own ``ROPE_INIT_FUNCTIONS``. The one
thing transformers gets wrong is dynamic NTK with a cache: frequencies follow the input length
while cached keys keep the frequencies they were rotated with. A forward pre-hook re-rotates the
cached keys whenever the frequencies are about to change, so cached decoding equals recomputing
the whole sequence without a cache.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers import PreTrainedModel
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from longreach.engine.rotary import RotaryLayout
from longreach.integrations.transformers.forward_args import given_cache, input_length
from longreach.methods.coverage import check_length
from longreach.methods.rope_scaling import RopeScaling

_ROTARY_STATE = ("rope_type", "attention_scaling", "max_seq_len_cached", "original_max_seq_len")


def apply_rope_scaling(
    model: PreTrainedModel,
    rotary: torch.nn.Module,
    method: RopeScaling,
    rope_type: str,
    layout: RotaryLayout,
    trained: int,
) -> tuple[Callable[[], None], object]:
    """Scale the model's RoPE in place; returns (undo, handle of its forward pre-hook): dynamic
    NTK's re-rotation of cached keys, or the refusal of inputs past what linear or YaRN cover."""
    if rope_type != "default":
        raise ValueError(
            f"{method.spec()} scales plain RoPE, but this model already uses {rope_type!r} RoPE scaling; "
            "compare against the model as it is (vanilla) instead"
        )
    config = rotary.config
    rotaries = [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)]
    saved_parameters = copy.deepcopy(config.rope_parameters)
    saved = [
        (
            m,
            {name: getattr(m, name) for name in _ROTARY_STATE if hasattr(m, name)},
            m.inv_freq.clone(),
            m.original_inv_freq.clone() if hasattr(m, "original_inv_freq") else None,
        )
        for m in rotaries
    ]
    parameters = {**saved_parameters, "rope_type": method.rope_type, "factor": float(method.factor)}
    if method.kind == "yarn":
        parameters["original_max_position_embeddings"] = config.max_position_embeddings
    config.rope_parameters = parameters
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS[method.rope_type](config, rotary.inv_freq.device)
    for module in rotaries:
        module.rope_type = method.rope_type
        module.attention_scaling = attention_scaling
        module.inv_freq.copy_(inv_freq)
        if hasattr(module, "original_inv_freq"):
            module.original_inv_freq.copy_(inv_freq)

    def undo() -> None:
        config.rope_parameters = saved_parameters
        for module, state, freq, original in saved:
            for name, value in state.items():
                setattr(module, name, value)
            module.inv_freq.copy_(freq)
            if original is not None:
                module.original_inv_freq.copy_(original)
            for name in ("long_inv_freq",):
                if hasattr(module, name):
                    delattr(module, name)

    if method.kind == "dynamic-ntk":  # covers any length
        check = _rerotate_cached_keys(rotary, layout.interleaved)
    else:
        check = _refuse_inputs_past(method, trained)
    return undo, model.base_model.register_forward_pre_hook(check, with_kwargs=True)


def _refuse_inputs_past(method: RopeScaling, trained: int):
    """A forward pre-hook raising :class:`InputTooLongError` when a call would reach past what
    ``method`` covers, as the position plans do in their attention: the model's own attention
    would read on silently. Left padding does not count."""

    def hook(_module, args, kwargs):
        _, cache = given_cache(kwargs)
        length = (cache.get_seq_length() if cache is not None else 0) + input_length(args, kwargs)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[-1] == length:
            length -= int(mask.to(torch.bool).to(torch.int8).argmax(dim=-1).min())  # the longest row's padding
        check_length(method, length, trained)

    return hook


def _rerotate_cached_keys(rotary: torch.nn.Module, interleaved: bool):
    def hook(_module, args, kwargs):
        _, cache = given_cache(kwargs)
        if cache is None or cache.get_seq_length() == 0:
            return
        past = cache.get_seq_length()
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(past, past + input_length(args, kwargs), device=rotary.inv_freq.device)[None]
        before = rotary.inv_freq.clone()
        # Let transformers' own dynamic update run now, as it will inside the forward.
        rotary(before.new_zeros(1), position_ids.to(rotary.inv_freq.device))
        change = rotary.inv_freq - before
        if not bool(change.any()):
            return
        turn = RotaryLayout(inv_freq=change, interleaved=interleaved)
        positions = _cached_positions(kwargs.get("attention_mask"), past)
        for layer in cache.layers:
            if not getattr(layer, "is_initialized", False) or layer.keys.numel() == 0:
                continue
            held = layer.keys.shape[-2]
            index = slice(layer.get_seq_length() - held, layer.get_seq_length())
            rows = positions[:, index].to(layer.keys.device)
            if bool((rows == rows[:1]).all()):
                layer.keys = turn.rotate(layer.keys, rows[0])
            else:
                layer.keys = torch.stack([turn.rotate(layer.keys[b], rows[b]) for b in range(rows.shape[0])])

    return hook


def _cached_positions(attention_mask: torch.Tensor | None, past: int) -> torch.Tensor:
    """RoPE positions of the cached tokens per row, as generate() derives them from the mask."""
    if attention_mask is None or attention_mask.dim() != 2:
        return torch.arange(past)[None]
    return (attention_mask[:, :past].long().cumsum(-1) - 1).clamp_min(0).cpu()
