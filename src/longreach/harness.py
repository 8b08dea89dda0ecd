"""lm-evaluation-harness model type ``longreach``: any lm-eval task, with a LongReach method applied.

lm-eval (up to 0.4.13 at least) discovers no third-party models by itself: a model type exists once
the module defining it is imported. ``python -m longreach.harness`` imports this module, which
registers ``longreach``, then runs lm-eval's own command line with the same arguments.

Example:
    $ python -m longreach.harness --model longreach --tasks hellaswag \\
        --model_args 'pretrained=smollm2-135m,method=self-extend:group_size=4;window=1024'
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from pathlib import Path
from typing import Any

import torch

try:
    from lm_eval.api.registry import MODEL_REGISTRY, register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as error:  # lm-eval is an optional extra
    raise ImportError(f"{error}; longreach.harness needs lm-eval: pip install 'longreach[lm-eval]'") from error

import longreach
from longreach.methods import METHODS, Method, MethodSpecError, check_length, is_auto, parse_length, parse_method
from longreach.models.config import sliding_window, trained_length

NAME = "longreach"

# lm-eval splits --model_args on commas, so settings inside a method spec are written with ';'.
_SEPARATOR = ";"


class LongReachLM(HFLM):
    """lm-eval's Hugging Face model (``HFLM``), loaded by :func:`longreach.load_model` with a method applied.

    ``pretrained`` is anything ``load_model`` takes: an embedded name (``smollm2-135m``), a ``.gguf``
    file, a model folder or a Hugging Face id. ``method`` is a LongReach spec with its settings
    separated by ``;`` (lm-eval splits ``model_args`` on commas): ``self-extend:group_size=4;window=1024``
    or ``self-extend:auto``. ``max_length`` is the context the method serves and the length lm-eval
    truncates inputs to; by default the trained length for ``vanilla``, what the settings cover for
    explicit settings, and four times the trained length for ``NAME:auto`` and for methods without a
    limit. ``NAME:auto`` picks its settings for ``max_length``. ``device`` defaults to CUDA when there is
    one, ``dtype`` (``"auto"``) to float32 on CPU and bfloat16 elsewhere; other arguments (``batch_size``,
    ``max_batch_size``, ...) go to ``HFLM``.

    Example:
        >>> lm = LongReachLM("smollm2-135m", method="self-extend:auto", max_length="32k")  # doctest: +SKIP
        >>> lm.method  # doctest: +SKIP
        SelfExtend(group_size=6, window=2048)
    """

    def __init__(
        self,
        pretrained: str | Path,
        method: str = "vanilla",
        max_length: int | str | None = None,
        device: str | None = None,
        dtype: str | torch.dtype | None = "auto",
        **kwargs: Any,
    ) -> None:
        spec = str(method).replace(_SEPARATOR, ",")
        _refuse_unknown(kwargs, str(method))
        parse_method(spec, target_length=1 << 20, trained_length=1 << 20)  # a typo fails before the slow load
        length = _length(max_length) if max_length is not None else None
        if device is None or (str(device).startswith("cuda") and not torch.cuda.is_available()):
            # lm-eval's command line asks for cuda:0 unless told otherwise; HFLM falls back to the CPU too.
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, tokenizer = longreach.load_model(pretrained, dtype=None if dtype == "auto" else dtype, device=device)
        trained = trained_length(model.config)
        chosen = parse_method(
            spec,
            target_length=length or 4 * trained,
            trained_length=trained,
            sliding_window=sliding_window(model.config),
        )
        if length is None:
            length = default_max_length(chosen, trained, auto=is_auto(spec))
        check_length(chosen, length, trained)
        longreach.extend(model, chosen)  # vanilla: the model's own attention, the honest baseline
        super().__init__(pretrained=model, tokenizer=tokenizer, max_length=length, **kwargs)
        self.method = chosen
        self.trained_length = trained
        self.model_name = str(pretrained)

    def get_model_info(self) -> dict:
        """HFLM's model info plus the LongReach method, so results say what they measured."""
        return {
            **super().get_model_info(),
            "longreach_model": self.model_name,
            "longreach_method": self.method.spec(),
            "longreach_max_length": self.max_length,
            "trained_length": self.trained_length,
        }


def default_max_length(method: Method, trained: int, *, auto: bool = False) -> int:
    """The context a method serves when ``max_length`` is not given.

    Example:
        >>> default_max_length(longreach.SelfExtend(group_size=4, window=1024), 8192)
        29696
        >>> default_max_length(longreach.Vanilla(), 8192)
        8192
    """
    if method.attention == "model":
        return trained
    covered = None if auto else method.max_length(trained)
    return covered if covered is not None else 4 * trained


def _length(value: int | str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    try:
        return parse_length(str(value))
    except ValueError as error:
        raise ValueError(f"max_length: {error}") from None


def _refuse_unknown(kwargs: dict[str, Any], method: str) -> None:
    """HFLM quietly drops arguments it does not know when handed a built model; a stray one here is
    often a method setting cut off by lm-eval's comma split."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    known = {name for name, p in inspect.signature(HFLM.__init__).parameters.items() if p.kind in named}
    unknown = sorted(set(kwargs) - known)
    if not unknown:
        return
    message = f"unknown model_args {', '.join(unknown)} for model {NAME!r}"
    cls = METHODS.get(method.partition(":")[0].strip())
    settings = [k for k in unknown if cls is not None and k in {f.name for f in dataclasses.fields(cls)}]
    if settings:
        message += (
            "; lm-eval splits model_args on commas, so separate method settings with ';': "
            f"method={method.strip()}{''.join(f';{k}={kwargs[k]}' for k in settings)}"
        )
    raise MethodSpecError(message)


def main(argv: list[str] | None = None) -> None:
    """Run lm-eval's command line with the ``longreach`` model type registered.

    Example:
        >>> main("--model longreach --model_args pretrained=smollm2-135m --tasks arc_easy".split())  # doctest: +SKIP
    """
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]  # lm-eval's parser reads sys.argv itself
    cli_evaluate()


if NAME not in MODEL_REGISTRY:  # once per process, also when this file runs as __main__
    register_model(NAME)(LongReachLM)

if __name__ == "__main__":
    main()
