"""``extend`` and ``restore``: install a method on a transformers model, and take it off exactly.

Nothing of the model's code is copied or patched. ``extend`` stores the method on the model's
attention modules, registers the ``"longreach"`` attention and mask functions, switches the
model's attention implementation and hooks the base model's forward to adopt its cache;
``restore`` undoes each step. Which steps apply is what the method says about itself
(``Method.attention``): the model as it is (vanilla: ``extend`` is ``restore``), its own
attention with its RoPE rescaled, or a plan (with a block memory for InfLLM) run by the engine.
"""

from __future__ import annotations

import warnings

from transformers import PreTrainedModel

from longreach.engine.eviction import evicts
from longreach.engine.memory.heap import release_free_heap
from longreach.integrations.transformers.attention import IMPLEMENTATION, STATE, Extension, ForwardMemo, register
from longreach.integrations.transformers.cache import AppendingLayer, EvictingLayer, LongReachCache
from longreach.integrations.transformers.forward_args import cache_keyword, given_cache, input_length
from longreach.integrations.transformers.generate import adapt_generate
from longreach.integrations.transformers.rope_scaling import apply_rope_scaling
from longreach.methods.base import Method
from longreach.methods.coverage import method_for, unchanged_note
from longreach.models.config import UnsupportedModelError, model_identity, sliding_window, trained_length
from longreach.models.rotary import attention_modules, describe_rotary

#: Where ``extend`` points ``NAME:auto`` when no target length is given: 4x the trained length.
DEFAULT_TARGET_FACTOR = 4


def extend(model: PreTrainedModel, method: Method | str, *, target_length: int | None = None) -> PreTrainedModel:
    """Make ``model`` attend with ``method``, in place; returns the model.

    ``method`` is a config (``longreach.SelfExtend(group_size=4, window=1024)``) or a spec as on
    the command line (``"self-extend:group_size=4,window=1024"``, ``"rerope:auto"``); ``NAME:auto``
    picks settings for ``target_length`` tokens (default: 4x the model's trained length).
    ``Vanilla()`` (``"vanilla"``) is the model's own attention: the same as :func:`restore`.
    Calling it again replaces the method (it never stacks); :func:`restore` undoes it exactly. A
    method the model refuses leaves it with the method it had.

    Example:
        >>> model, tokenizer = longreach.load_model("smollm2-135m")  # doctest: +SKIP
        >>> longreach.extend(model, "self-extend:auto", target_length=32768)  # doctest: +SKIP
        >>> longreach.current_method(model)  # doctest: +SKIP
        SelfExtend(group_size=6, window=2048)
    """
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"extend() takes a transformers PreTrainedModel, got {type(model).__name__}")
    if not isinstance(method, Method | str):
        raise TypeError(
            "extend() needs a method config such as longreach.SelfExtend(group_size=4, window=1024) or a spec "
            f"such as 'self-extend:auto', got {type(method).__name__}"
        )
    trained = trained_length(model.config)
    window = sliding_window(model.config)
    target = target_length if target_length is not None else DEFAULT_TARGET_FACTOR * trained
    identity = model_identity(model.config)
    spec, method = method, method_for(method, target, trained, total=1, sliding_window=window, model=identity)
    note = unchanged_note(spec, method, target)
    if note is not None:
        warnings.warn(note, stacklevel=2)
    # Before restore: a refused method leaves the model as it was.
    method.check_model(trained)
    if window is not None:
        method.check_window(window, trained)
    previous = current_method(model)
    restore(model)  # one method at a time: a second extend replaces the first
    if method.attention == "model":
        return model
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
    if None not in layouts and method.attention == "model-rope":
        raise UnsupportedModelError(
            f"{method.spec()} rescales one RoPE, but this model keeps one per layer type "
            f"({', '.join(layouts)}); compare against the model as it is (vanilla) instead"
        )
    if window is not None and method.attention == "plan":
        warnings.warn(
            f"this model's sliding-window layers attend at most {window} tokens back, and still do with "
            f"{method.spec()}: keys further back stay unseen there, and the method cannot reach past the window",
            stacklevel=3,
        )
    parts = method.parts()
    extension = Extension(
        method=method,
        parts=parts,
        layouts=layouts,
        trained_length=trained,
        rope_type=rope_type,
        original_implementation=model.config._attn_implementation or "sdpa",
        evicting=evicts(parts),
    )
    for module in attention_modules(model):
        setattr(module, STATE, extension)
        extension.modules.append(module)
    undo_generate = adapt_generate(model, method, trained)
    if undo_generate is not None:
        extension.undo.append(undo_generate)
    if method.attention == "model-rope":
        # A baseline: the model's own attention with its own rope parameters changed.
        undo_rope, hook = apply_rope_scaling(model, rotary, method, rope_type, layouts[None], trained)
        extension.undo.append(undo_rope)
        extension.hooks.append(hook)
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
        extension.memo = ForwardMemo()
        if extension.memory and model.device.type == "cpu" and input_length(args, kwargs) > 1:
            # A long input streams through in execution blocks: without this, the freed
            # activations of the blocks before make RSS grow with the input's length.
            release_free_heap()
        return args, kwargs

    register()
    cache_name = cache_keyword(model.base_model.forward)
    # The base model receives the cache whether the user calls it or the LM head model.
    extension.hooks.append(model.base_model.register_forward_pre_hook(adopt_cache, with_kwargs=True))
    model.set_attn_implementation(IMPLEMENTATION)
    return model


def restore(model: PreTrainedModel) -> PreTrainedModel:
    """Undo :func:`extend`: the model attends exactly as before. A no-op on a plain model.

    Example:
        >>> longreach.restore(model)  # doctest: +SKIP
    """
    extension = _extension(model)
    if extension is None:
        return model
    for module in extension.modules:
        if hasattr(module, STATE):
            delattr(module, STATE)
    for hook in extension.hooks:
        hook.remove()
    extension.active_cache = None
    for undo in reversed(extension.undo):
        undo()
    if model.config._attn_implementation != extension.original_implementation:
        model.set_attn_implementation(extension.original_implementation)
    return model


def current_method(model: PreTrainedModel) -> Method | None:
    """The method a model is extended with, or None for the model as it is.

    Example:
        >>> longreach.extend(model, longreach.SelfExtend(group_size=4, window=1024))  # doctest: +SKIP
        >>> longreach.current_method(model)  # doctest: +SKIP
        SelfExtend(group_size=4, window=1024)
    """
    extension = _extension(model)
    return extension.method if extension else None


def _extension(model) -> Extension | None:
    for module in attention_modules(model):
        extension = getattr(module, STATE, None)
        if extension is not None:
            return extension
    return None
