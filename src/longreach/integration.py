"""transformers integration: ``extend``/``restore`` through the AttentionInterface.

Nothing of the model's code is copied or patched. ``extend`` registers one attention function
and one mask function under the name ``"longreach"``, stores the method on the model's attention
modules and switches the model's attention implementation; ``restore`` switches it back.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, prepare_padding_mask

from longreach.cache import AppendingLayer, EvictingLayer, LongReachCache
from longreach.engine.attention import attend
from longreach.engine.memory_attention import MemoryState, attend_with_memory
from longreach.engine.rotary import RotaryLayout
from longreach.forward_args import cache_keyword, given_cache, input_length
from longreach.memory import release_free_heap
from longreach.methods.base import InputTooLongError, Method, Part, retained_spans
from longreach.methods.infllm import InfLLM
from longreach.methods.rope_scaling import RopeScaling
from longreach.methods.vanilla import Vanilla
from longreach.rope_scaling import apply_rope_scaling

IMPLEMENTATION = "longreach"
_STATE = "_longreach"


class UnsupportedModelError(ValueError):
    """The model cannot be extended (no RoPE, attention outside the AttentionInterface, ...)."""


@dataclass
class _Extension:
    """What the attention function needs, shared by every attention module of one model."""

    method: Method
    parts: tuple[Part, ...]
    rotary: torch.nn.Module
    layouts: dict[str | None, RotaryLayout]  # per layer type; key None for a model with one RoPE
    trained_length: int
    rope_type: str
    original_implementation: str
    evicting: bool = False  # the plan drops keys for good: the cache evicts them
    memory: bool = False  # keys leave the cache for a block memory searched per query block (InfLLM)
    modules: list[torch.nn.Module] = field(default_factory=list)
    hook: object = None  # handle of the forward pre-hook that adopts the cache
    active_cache: LongReachCache | None = None  # the cache of the forward in progress
    undo_rope: object = None  # restores the model's rope parameters (RopeScaling)
    undo_generation: object = None  # restores generate() and its config (InfLLM's prefill chunks)
    # What every layer of the forward in progress shares (row offsets, spans, kept keys): keyed
    # by the shapes it depends on, emptied by the pre-hook at the start of each forward.
    forward_memo: dict = field(default_factory=dict)
    # Per attention layer, found at its first call: the RoPE it applies (see ``_rope_of``).
    rope_of_layer: dict[int, tuple[str | None, RotaryLayout]] = field(default_factory=dict)


def extend(model: PreTrainedModel, method: Method) -> PreTrainedModel:
    """Make ``model`` attend with ``method``, in place; returns the model.

    Calling it again replaces the method (it never stacks); :func:`restore` undoes it exactly. A
    method the model refuses leaves it with the method it had.

    Example:
        >>> model, tokenizer = longreach.load_model("smollm2-135m")  # doctest: +SKIP
        >>> longreach.extend(model, longreach.SelfExtend(group_size=4, window=1024))  # doctest: +SKIP
    """
    if not isinstance(method, Method):
        raise TypeError(
            f"extend() needs a method config such as longreach.SelfExtend(group_size=4, window=1024), "
            f"got {type(method).__name__}"
        )
    trained = trained_length(model.config)
    method.check_model(trained)  # before restore: a refused method leaves the model as it was
    window = sliding_window(model.config)
    if isinstance(method, InfLLM) and window is not None and method.n_local > window:
        raise ValueError(
            f"InfLLM: this model attends at most {window} tokens back (sliding window), so the local window "
            f"n_local ({method.n_local}) and the memory's distance must fit in it: use n_local <= {window} "
            f"(InfLLM.for_model({trained}, n_local={window}), or infllm:n_local={window} on the command line)"
        )
    previous = current_method(model)
    restore(model)  # one method at a time: a second extend replaces the first
    try:
        return _install(model, method, trained, window)
    except Exception:
        # A refusal found only on the plain model (e.g. rope scaling on a model with a RoPE per layer
        # type) must not cost the user the method the model had.
        restore(model)
        if previous is not None:
            extend(model, previous)
        raise


def _install(model: PreTrainedModel, method: Method, trained: int, window: int | None) -> PreTrainedModel:
    rotary, layouts, rope_type = describe_rotary(model)
    if None not in layouts and isinstance(method, RopeScaling):
        raise UnsupportedModelError(
            f"{method.spec()} rescales one RoPE, but this model keeps one per layer type "
            f"({', '.join(layouts)}); compare against the model as it is (vanilla) instead"
        )
    if window is not None and not isinstance(method, (InfLLM, RopeScaling, Vanilla)):
        warnings.warn(
            f"this model's sliding-window layers attend at most {window} tokens back, and still do with "
            f"{method.spec()}: keys further back stay unseen there, and the method cannot reach past the window",
            stacklevel=3,
        )
    parts = method.parts()
    extension = _Extension(
        method=method,
        parts=parts,
        rotary=rotary,
        layouts=layouts,
        trained_length=trained,
        rope_type=rope_type,
        original_implementation=model.config._attn_implementation or "sdpa",
        evicting=_evicts(parts),
        memory=isinstance(method, InfLLM),
    )
    for module in _attention_modules(model):
        setattr(module, _STATE, extension)
        extension.modules.append(module)
    # InfLLM's generate() reads a long prompt in execution blocks: activations stay one block big.
    extension.undo_generation = _adapt_generate(
        model, method.exec_block if extension.memory else None, past_trained_is_expected=not isinstance(method, Vanilla)
    )
    if isinstance(method, RopeScaling):
        # A baseline: the model's own attention with its own rope parameters changed.
        extension.undo_rope, extension.hook = apply_rope_scaling(model, rotary, method, rope_type, layouts[None])
        if extension.hook is None:  # linear and YaRN cover factor x trained tokens (dynamic NTK: any)
            extension.hook = model.base_model.register_forward_pre_hook(
                _refuse_inputs_past(method, trained), with_kwargs=True
            )
        return model

    def adopt_cache(_module, args, kwargs):
        # Every forward sets the cache it works on, so no call sees another call's cache.
        name, cache = given_cache(kwargs)
        use_cache = kwargs.get("use_cache")
        if cache is None and (use_cache if use_cache is not None else model.config.use_cache):
            # The model would create its cache inside the forward, out of our sight: the first
            # forward (the prefill) could then neither evict nor keep re-rotated keys.
            cache = kwargs[name or cache_name] = LongReachCache(config=model.config)
        layer_class = EvictingLayer if extension.memory or extension.evicting else AppendingLayer
        extension.active_cache = LongReachCache.adopt(cache, layer_class=layer_class)
        extension.forward_memo = {}
        if extension.memory and model.device.type == "cpu" and input_length(args, kwargs) > 1:
            # A long input streams through in execution blocks: without this, the freed
            # activations of the blocks before make RSS grow with the input's length.
            release_free_heap()
        return args, kwargs

    _register()
    cache_name = cache_keyword(model.base_model.forward)
    # The base model receives the cache whether the user calls it or the LM head model.
    extension.hook = model.base_model.register_forward_pre_hook(adopt_cache, with_kwargs=True)
    model.set_attn_implementation(IMPLEMENTATION)
    return model


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


#: New tokens of a generate() call that names no length: transformers' own default.
DEFAULT_NEW_TOKENS = 20


class _TrainedLengthReminderFilter(logging.Filter):
    """Drops transformers' reminder that generation "exceeded the model's predefined maximum
    length" (performance degradation, exceptions) while ``active``: past the trained length is what
    a method is for, and an input longer than it covers is refused before any token is made."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.active and "exceeded the model's predefined maximum length" in record.getMessage())


_REMINDER_FILTER = _TrainedLengthReminderFilter()
logging.getLogger("transformers.generation.stopping_criteria").addFilter(_REMINDER_FILTER)


def _adapt_generate(model: PreTrainedModel, prefill_chunk: int | None, *, past_trained_is_expected: bool):
    """Make ``model.generate`` fit an extended model; returns the undo.

    A call that names no length gets transformers' default of 20 new tokens but capped at
    ``config.max_position_embeddings``, the trained length, so every prompt longer than that
    (the point of extending) would be refused: such calls get the 20 new tokens uncapped.
    ``prefill_chunk`` sets the generation config's ``prefill_chunk_size``. With
    ``past_trained_is_expected`` (every method but vanilla) transformers' reminder that the trained
    length was exceeded is not shown; it is logged once per process, so a plain model generating
    past its trained length later in the same process does not show it either.
    """
    config = getattr(model, "generation_config", None)
    if config is None or not callable(getattr(model, "generate", None)):
        return None
    original_generate, chunk_before = model.generate, config.prefill_chunk_size
    if prefill_chunk is not None:
        config.prefill_chunk_size = prefill_chunk

    def generate(*args, **kwargs):
        given = kwargs.get("generation_config", args[1] if len(args) > 1 else None) or model.generation_config
        named = (kwargs.get("max_length"), kwargs.get("max_new_tokens"), given.max_length, given.max_new_tokens)
        if all(length is None for length in named):
            kwargs["max_new_tokens"] = DEFAULT_NEW_TOKENS
        _REMINDER_FILTER.active += past_trained_is_expected
        try:
            return original_generate(*args, **kwargs)
        finally:
            _REMINDER_FILTER.active -= past_trained_is_expected

    generate.__doc__ = original_generate.__doc__
    model.generate = generate

    def undo() -> None:
        config.prefill_chunk_size = chunk_before
        if model.__dict__.get("generate") is generate:
            del model.generate

    return undo


def _evicts(parts: tuple[Part, ...]) -> bool:
    """Whether later queries stop seeing some keys for good (LM-Infinite, StreamingLLM)."""
    position = 1 << 20
    covered = 0
    for lo, hi in sorted(retained_spans(parts, torch.tensor(position))):
        if lo > covered:
            return True
        covered = max(covered, hi)
    return covered < position


def restore(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`extend`: the model attends exactly as before. A no-op on a plain model.

    Example:
        >>> longreach.restore(model)  # doctest: +SKIP
    """
    extension = _extension(model)
    if extension is None:
        return model
    for module in extension.modules:
        if hasattr(module, _STATE):
            delattr(module, _STATE)
    if extension.hook is not None:
        extension.hook.remove()
    extension.active_cache = None
    if extension.undo_rope is not None:
        extension.undo_rope()
    if extension.undo_generation is not None:
        extension.undo_generation()
    if model.config._attn_implementation != extension.original_implementation:
        model.set_attn_implementation(extension.original_implementation)
    return model


def current_method(model: PreTrainedModel) -> Method | None:
    """The method a model is extended with, or None.

    Example:
        >>> longreach.extend(model, longreach.SelfExtend(group_size=4, window=1024))  # doctest: +SKIP
        >>> current_method(model)  # doctest: +SKIP
        SelfExtend(group_size=4, window=1024)
    """
    extension = _extension(model)
    return extension.method if extension else None


def trained_length(config) -> int:
    """The context length the model was trained to (``max_position_embeddings``)."""
    length = getattr(config, "max_position_embeddings", None)
    if not isinstance(length, int) or length <= 0:
        raise UnsupportedModelError(
            f"{type(config).__name__} has no max_position_embeddings: cannot tell the trained length"
        )
    return length


def sliding_window(config) -> int | None:
    """The sliding window of the model's windowed attention layers (Mistral, Qwen2 with
    ``use_sliding_window``); None when every layer attends to the whole context."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return window


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


def _rope_of(module: torch.nn.Module, layouts: dict[str | None, RotaryLayout]) -> tuple[str | None, RotaryLayout]:
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
    for module in _attention_modules(model):
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


def _attention_modules(model) -> list[torch.nn.Module]:
    return [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "config")]


def _extension(model) -> _Extension | None:
    for module in _attention_modules(model):
        extension = getattr(module, _STATE, None)
        if extension is not None:
            return extension
    return None


def _register() -> None:
    AttentionInterface.register(IMPLEMENTATION, longreach_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, key_padding_mask)


def key_padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask function for ``"longreach"``: a (B, kv_offset + kv_length) bool of attendable tokens
    of the whole sequence, or None.

    The engine builds regions itself; all it needs from the mask is padding. A 4D mask would
    cost O(n^2) memory at long lengths.
    """
    if int(kv_offset) + int(kv_length) != int(q_offset) + int(q_length):
        raise ValueError(
            "LongReach needs a cache that grows with the sequence (DynamicCache, the default); "
            "a static or pre-allocated cache is not supported: drop cache_implementation='static'"
        )
    padding = prepare_padding_mask(attention_mask, kv_length + kv_offset, 0)
    if padding is None:
        return None
    # Indexed by position in the whole sequence: a cache that evicts keeps arbitrary tokens.
    padding = padding[:, : kv_offset + kv_length].to(torch.bool)
    if bool(padding.all()):
        return None
    return padding


def longreach_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: query (B, Hq, Nq, D) and key/value (B, Hkv, Nk, D),
    rotated at their true positions, the cache already updated. Returns (B, Nq, Hq, D)."""
    extension: _Extension | None = getattr(module, _STATE, None)
    if extension is None:
        raise RuntimeError(
            "attention implementation 'longreach' is set but this model was not extended: "
            "call longreach.extend(model, method) rather than setting it by hand"
        )
    _refuse_unsupported(module, extension, dropout, kwargs)
    batch, _, n_query, head_dim = query.shape
    n_key = key.shape[2]
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "LongReach received a 4D attention mask (passed by the caller, or built by the model itself, as "
            "Doge's dynamic mask is); it takes 2D padding masks (batch, length) only"
        )
    if extension.rope_type == "dynamic" and n_key > n_query:
        raise ValueError(
            "dynamic NTK RoPE recomputes its frequencies on every call while the cached keys keep the "
            "old ones, so cached decoding would be silently wrong: run with use_cache=False or use a "
            "static rope type"
        )
    cache = extension.active_cache
    if cache is not None and module.layer_idx < len(cache.layers):
        token_index = cache.token_index(module.layer_idx, n_key).to(query.device)
        total = cache.layers[module.layer_idx].get_seq_length()
    else:
        total = attention_mask.shape[-1] if attention_mask is not None else n_key
        token_index = torch.arange(total - n_key, total, device=query.device)
    query_index = torch.arange(total - n_query, total, device=query.device)
    memo = extension.forward_memo
    layer_kind = type(cache.layers[module.layer_idx]).__name__ if cache is not None else None
    rows_key = ("rows", n_query, total, batch)
    if rows_key not in memo:
        memo[rows_key] = _row_offsets(kwargs.get("position_ids"), attention_mask, batch, query_index)
    offsets, has_holes = memo[rows_key]
    check_length(extension.method, total - min(offsets), extension.trained_length)
    scale = scaling if scaling is not None else head_dim**-0.5
    method = extension.method
    if module.layer_idx not in extension.rope_of_layer:
        extension.rope_of_layer[module.layer_idx] = _rope_of(module, extension.layouts)
    rope_kind, layout = extension.rope_of_layer[module.layer_idx]

    def attend_rows(index, rows: list[int], offset: int) -> torch.Tensor:
        valid = attention_mask[rows[0]].to(query.device)[token_index] if has_holes[rows[0]] else None
        query_positions = query_index - offset
        query_scale = method.query_scale(query_positions, extension.trained_length)
        if extension.memory:
            if valid is not None:
                raise ValueError(
                    "InfLLM needs each row's tokens contiguous (left padding is fine); this padding mask has holes"
                )
            state = _memory_state(cache, module.layer_idx, tuple(rows), offset, method)
            out, kept = attend_with_memory(
                query[index],
                key[index],
                value[index],
                method,
                layout,
                state,
                query_positions=query_positions,
                key_positions=token_index - offset,
                scale=scale,
                query_scale=query_scale,
                sliding_window=kwargs.get("sliding_window"),
                softcap=kwargs.get("softcap"),
                position_memo=memo.setdefault(
                    ("memory", tuple(rows), offset, n_query, total, kwargs.get("sliding_window"), rope_kind), {}
                ),
            )
            memory_kept.append((state, kept))
            return out
        store = cache.store(module.layer_idx, tuple(rows), offset) if cache is not None else None
        return attend(
            query[index],
            key[index],
            value[index],
            extension.parts,
            layout,
            query_positions=query_positions,
            key_positions=token_index - offset,
            scale=scale,
            key_valid=valid,
            sliding_window=kwargs.get("sliding_window"),
            key_store=store,
            query_scale=query_scale,
            softcap=kwargs.get("softcap"),
            sink_logits=kwargs.get("s_aux"),
            position_memo=memo.setdefault(
                (
                    "spans",
                    tuple(rows),
                    offset,
                    n_query,
                    n_key,
                    total,
                    layer_kind,
                    kwargs.get("sliding_window"),
                    rope_kind,
                ),
                {},
            ),
        )

    memory_kept: list[tuple[MemoryState, torch.Tensor]] = []
    groups = _row_groups(offsets, has_holes)
    if len(groups) == 1:  # the common case: no copies of q, k, v
        rows, offset = groups[0]
        output = attend_rows(slice(None), rows, offset)
    else:
        output = torch.empty_like(query)
        for rows, offset in groups:
            index = torch.tensor(rows, device=query.device)
            output[index] = attend_rows(index, rows, offset)
    if memory_kept and cache is not None:
        # A key stays in the cache while any row group still reads it from there.
        kept = torch.stack([k for _, k in memory_kept]).any(dim=0)
        cache.evict(module.layer_idx, kept)
        for state, _ in memory_kept:
            state.keep(kept)
    elif extension.evicting and cache is not None:
        kept_key = ("kept", n_key, total, tuple(offsets), layer_kind)
        if kept_key not in memo:
            memo[kept_key] = _still_visible(extension.parts, token_index, total, set(offsets))
        cache.evict(module.layer_idx, memo[kept_key])
    return output.transpose(1, 2).contiguous(), None


def _memory_state(cache, layer_idx: int, rows: tuple[int, ...], offset: int, method: InfLLM) -> MemoryState:
    """The layer's block memory for these rows; a fresh one for a call without a cache."""

    def fresh() -> MemoryState:
        return MemoryState(blocks_end=method.n_init)

    if cache is None:
        return fresh()
    return cache.memory_state(layer_idx, rows, offset, fresh)


def _still_visible(parts: tuple[Part, ...], token_index: torch.Tensor, total: int, offsets: set[int]) -> torch.Tensor:
    """Which keys some later query of some row can still attend to."""
    kept = torch.zeros(token_index.shape, dtype=torch.bool, device=token_index.device)
    for offset in offsets:
        positions = token_index - offset
        for lo, hi in retained_spans(parts, torch.tensor(total - offset)):
            kept |= (positions >= lo) & (positions < hi)
    return kept


def _refuse_unsupported(module, extension, dropout, kwargs) -> None:
    if extension.memory and kwargs.get("s_aux") is not None:
        raise UnsupportedModelError(
            "InfLLM does not support learned attention sinks (GPT-OSS's s_aux); the other methods do"
        )
    if kwargs.get("sinks") is not None:  # only the s_aux form is merged; any other must not be dropped
        raise UnsupportedModelError("learned attention sinks passed as `sinks` are not supported by LongReach")
    if module.training and dropout > 0:
        raise ValueError("LongReach is for inference: call model.eval() (attention dropout is not supported)")
    if not getattr(module, "is_causal", True):
        raise UnsupportedModelError("LongReach methods apply to causal (decoder) attention only")


def _row_offsets(position_ids, mask, batch, query_index) -> tuple[list[int], list[bool]]:
    """Per row, sequence index minus RoPE position (left padding shifts it); and whether the row's
    padding mask has holes among real positions (anything but left padding)."""
    query_index = query_index.to("cpu")
    n_query = query_index.numel()
    if position_ids is None:
        position_ids = query_index[None]
    position_ids = position_ids.to("cpu").expand(batch, n_query)
    if mask is None:
        query_valid = torch.ones(batch, n_query, dtype=torch.bool)
    else:
        mask = mask.to("cpu")
        query_valid = mask[:, query_index]
    offsets_per_query = query_index[None] - position_ids
    last_valid = torch.where(query_valid, torch.arange(n_query)[None], -1).max(dim=1).values.clamp_min(0)
    offsets = offsets_per_query.gather(1, last_valid[:, None]).squeeze(1)
    if mask is not None and not bool(query_valid.any(dim=1).all()):
        # A call that is all padding for a row (a chunk of a left-padded prompt) has no position
        # to read the offset from: the row's first real token is at position 0.
        real = mask.to(torch.bool)
        first_real = torch.where(real.any(dim=1), real.to(torch.int8).argmax(dim=1), mask.shape[-1])
        offsets = torch.where(query_valid.any(dim=1), offsets, first_real)
    if bool(((offsets_per_query != offsets[:, None]) & query_valid).any()):
        raise ValueError(
            "LongReach needs consecutive position_ids within each row (left padding is fine); "
            "packed sequences or custom positions are not supported"
        )
    has_holes = [False] * batch
    if mask is not None:
        key_index = torch.arange(mask.shape[-1])[None]
        holes = (~mask) & (key_index >= offsets[:, None])
        has_holes = holes.any(dim=1).tolist()
    return offsets.tolist(), has_holes


def _row_groups(offsets: list[int], has_holes: list[bool]) -> list[tuple[list[int], int]]:
    """Rows sharing an offset and free of holes run together; a row with holes runs alone."""
    groups: dict[int, list[int]] = {}
    single = []
    for row, (offset, holes) in enumerate(zip(offsets, has_holes, strict=True)):
        if holes:
            single.append(([row], offset))
        else:
            groups.setdefault(offset, []).append(row)
    return [(rows, offset) for offset, rows in groups.items()] + single


def check_length(method: Method, length: int, trained: int) -> None:
    """Raise :class:`InputTooLongError` when ``method`` cannot cover ``length`` tokens on a model
    trained to ``trained`` tokens, naming settings that would."""
    limit = method.max_length(trained)
    if limit is None or length <= limit:
        return
    suggestion = method.suggest(length, trained)
    hint = f"; {suggestion!r} ({suggestion.spec()}) would cover it" if suggestion is not None else ""
    raise InputTooLongError(
        f"input of {length} tokens is longer than {method!r} covers on a model trained to "
        f"{trained} tokens ({limit} tokens){hint}"
    )
