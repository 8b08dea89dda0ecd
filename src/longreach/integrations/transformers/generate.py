"""``model.generate`` on an extended model: inputs past the trained length are the point, so the
length transformers derives from the trained length, and its reminder that it was exceeded, give
way to the method's own limit, checked before any token is read."""

from __future__ import annotations

import logging

import torch
from transformers import PreTrainedModel

from longreach.methods.base import InputTooLongError, Method
from longreach.methods.coverage import check_length

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


def adapt_generate(model: PreTrainedModel, method: Method, trained: int):
    """Make ``model.generate`` fit ``method``; returns the undo (None for a model without generate).

    * A call that names no length gets transformers' default of 20 new tokens, uncapped: capped
      at the trained length (``max_position_embeddings``), every prompt longer than that, the
      point of extending, would be refused.
    * The prompt's true length (left padding does not count) plus the tokens to generate is
      checked against what the settings cover before the prefill, so a call fails at once, not
      after minutes of reading.
    * ``method.prefill_chunk`` becomes the generation config's ``prefill_chunk_size``.
    * transformers' reminder that the trained length was exceeded is not shown (it is logged once
      per process, so a plain model generating past its trained length later in the same process
      does not show it either).
    """
    config = getattr(model, "generation_config", None)
    if config is None or not callable(getattr(model, "generate", None)):
        return None
    original_generate, chunk_before = model.generate, config.prefill_chunk_size
    if method.prefill_chunk is not None:
        config.prefill_chunk_size = method.prefill_chunk

    def generate(*args, **kwargs):
        given = kwargs.get("generation_config", args[1] if len(args) > 1 else None) or model.generation_config
        max_length = kwargs.get("max_length", given.max_length)
        max_new_tokens = kwargs.get("max_new_tokens", given.max_new_tokens)
        if kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None:
            if given.max_length is None and given.max_new_tokens is None:
                kwargs["max_new_tokens"] = max_new_tokens = DEFAULT_NEW_TOKENS
        _check_covers(method, trained, args, kwargs, max_new_tokens, max_length)
        _REMINDER_FILTER.active += 1
        try:
            return original_generate(*args, **kwargs)
        finally:
            _REMINDER_FILTER.active -= 1

    generate.__doc__ = original_generate.__doc__
    model.generate = generate

    def undo() -> None:
        config.prefill_chunk_size = chunk_before
        if model.__dict__.get("generate") is generate:
            del model.generate

    return undo


def _check_covers(method: Method, trained: int, args, kwargs, max_new_tokens, max_length) -> None:
    """Refuse a call whose prompt plus answer is longer than ``method`` covers."""
    prompt = kwargs.get("input_ids", kwargs.get("inputs", args[0] if args else None))
    if not isinstance(prompt, torch.Tensor) or prompt.dim() != 2:
        return  # embeddings or an unusual call: the attention checks every forward anyway
    padded = prompt.shape[1]
    mask = kwargs.get("attention_mask")
    real = int(mask.sum(dim=-1).max()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else padded
    if max_new_tokens is not None:
        new = int(max_new_tokens)
    elif max_length is not None:
        new = max(int(max_length) - padded, 0)
    else:
        return
    try:
        check_length(method, real + new, trained)
    except InputTooLongError as error:
        raise InputTooLongError(
            f"the prompt ({real} tokens) plus {new} new tokens needs {real + new} positions: {error}"
        ) from None
