"""A method is a position plan: disjoint parts of the causal (query, key) plane, each with the
RoPE positions its queries and keys are rotated to, plus an optional per-query score scale.

Every part's region is, for each query position i, one contiguous span of key positions
[lo(i), hi(i)) with lo and hi non-decreasing in i. That holds for every method in scope (bands in
i - j, blocks in chunk space, leading sink tokens) and is what lets the engine walk query tiles and
touch only the keys a part can see, and lets a cache drop keys no later query can see.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import ClassVar, Literal

import torch

Positions = Callable[[torch.Tensor], torch.Tensor]
KeySpan = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

#: A query position far beyond any input: a part's upper bound there is where its keys end for
#: good (e.g. the sink tokens), which tells a cache what it must keep forever.
FAR_FUTURE = 1 << 50


@dataclass(frozen=True)
class Part:
    """One region of the causal plane and the positions used inside it.

    ``key_span(i)`` gives, per true query position ``i`` (int64), the key positions
    ``[lo, hi)`` of the region. ``query_position(i)`` and ``key_position(j)`` give the positions
    to rotate to (int64 or float); ``None`` keeps the true position.

    Example:
        >>> neighbours = Part("neighbour", key_span=lambda i: (i - 63, i + 1))
    """

    name: str
    key_span: KeySpan
    query_position: Positions | None = None
    key_position: Positions | None = None


class InputTooLongError(ValueError):
    """The input is longer than the chosen settings can cover on this model."""


def method_config(cls: type) -> type:
    """Decorator for method configs: a frozen dataclass whose repr lists only non-default settings."""
    return dataclass(frozen=True, repr=False)(cls)


@method_config
class Method:
    """Base of every method config: frozen dataclasses validated on creation.

    ``log_scale_base`` (every method accepts it) scales each query by
    ``max(1, log(i + 1) / log(log_scale_base))``, the log-n attention scaling of ReRoPE and LongLM.

    Example:
        >>> from longreach import SelfExtend
        >>> method = SelfExtend(group_size=4, window=1024)
        >>> method.spec(), method.max_length(8192)
        ('self-extend:group_size=4,window=1024', 29696)
    """

    log_scale_base: int | None = field(default=None, kw_only=True)

    #: names used on the command line (``--method NAME:key=value``); the first is the default
    cli_names: ClassVar[tuple[str, ...]] = ()
    #: How the method attends, which is all an integration needs to know to install it:
    #: ``"model"`` with the model's own attention, unchanged (``extend`` restores the model);
    #: ``"model-rope"`` with the model's own attention and its RoPE parameters rescaled;
    #: ``"plan"`` by the engine executing :meth:`parts`;
    #: ``"memory"`` by a plan whose distant part is retrieved from a block memory (InfLLM).
    attention: ClassVar[Literal["model", "model-rope", "plan", "memory"]] = "plan"

    def __post_init__(self) -> None:
        if self.log_scale_base is not None:
            check_int(type(self).__name__, "log_scale_base", self.log_scale_base, 2)
        self.validate()

    def validate(self) -> None:
        """Raise a clear error for settings that make no sense on any model."""

    def parts(self) -> tuple[Part, ...]:
        raise NotImplementedError

    @property
    def cli_name(self) -> str:
        return self.cli_names[0]

    @property
    def prefill_chunk(self) -> int | None:
        """Tokens per forward call a long input must be read in (None: any split gives the same
        result, so callers choose for memory alone)."""
        return None

    @property
    def changes_attention(self) -> bool:
        """False for settings under which the method is the model's own attention at any length
        (SelfExtend with group 1, a RoPE scaling factor of 1): what ``NAME:auto`` picks for inputs
        the model was trained on."""
        return True

    @property
    def depends_on_length(self) -> bool:
        """Whether attention at a position changes with how long the whole input is (it does not
        for position plans: they are causal)."""
        return False

    def query_scale(self, positions: torch.Tensor, trained_length: int) -> torch.Tensor | None:
        """Per-query factor (float64, like ``positions``) multiplying the attention scores, or None."""
        if self.log_scale_base is None:
            return None
        log_n = torch.log(positions.clamp_min(0).to(torch.float64) + 1) / math.log(self.log_scale_base)
        return log_n.clamp_min(1.0)

    def check_model(self, trained_length: int) -> None:
        """Raise ``ValueError`` when these settings need distances a model trained to
        ``trained_length`` tokens never saw."""

    def check_window(self, sliding_window: int, trained_length: int) -> None:
        """Raise ``ValueError`` when these settings need the model to attend further back than its
        ``sliding_window`` (tokens)."""

    def max_length(self, trained_length: int) -> int | None:
        """Longest input (tokens) these settings cover on a model trained to ``trained_length``;
        ``None`` when there is no limit."""
        return None

    def suggest(self, length: int, trained_length: int) -> Method | None:
        """Settings of the same method that would cover ``length`` tokens, if any."""
        return None

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **common) -> Method:
        """Settings for inputs up to ``target_length`` on a model trained to ``trained_length``."""
        required = [f.name for f in fields(cls) if f.default is MISSING]  # type: ignore[arg-type]
        if required:
            raise TypeError(f"{cls.__name__} has no automatic settings; give {', '.join(required)}")
        return cls(**common)

    @classmethod
    def auto(cls, name: str, target_length: int, trained_length: int, sliding_window: int | None = None) -> Method:
        """What ``NAME:auto`` builds under CLI name ``name``; ``sliding_window`` is the model's
        (only settings that must fit in it use it)."""
        return cls.for_target(target_length, trained_length)

    @classmethod
    def implied_settings(cls, name: str) -> dict:
        """Settings the CLI name itself gives (e.g. ``yarn`` gives ``kind="yarn"``)."""
        return {}

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> Method:
        """Build from CLI settings given under CLI name ``name``."""
        return cls(**settings)

    def settings(self) -> dict:
        """Settings that differ from their defaults, in field order (required ones always)."""
        shown = {}
        for f in sorted(fields(self), key=lambda f: f.kw_only):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.default is MISSING or value != f.default:
                shown[f.name] = value
        return shown

    def spec(self) -> str:
        """The CLI spec that recreates this config, e.g. ``self-extend:group_size=4,window=1024``."""
        values = ",".join(f"{k}={v}" for k, v in self.settings().items())
        return f"{self.cli_name}:{values}" if values else self.cli_name

    def __repr__(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({values})"


def retained_spans(parts: tuple[Part, ...], next_position: torch.Tensor) -> list[tuple[int, int]]:
    """Key position spans that queries at ``next_position`` (a 0-d int64 tensor) or later can
    still see: per part from its lower bound now to its upper bound in the far future."""
    far = torch.tensor([FAR_FUTURE], dtype=torch.int64)
    spans = []
    for part in parts:
        lo, _ = part.key_span(next_position.reshape(1))
        _, hi = part.key_span(far)
        spans.append((max(int(lo[0]), 0), int(hi[0])))
    return spans


def check_int(owner: str, name: str, value: object, minimum: int) -> None:
    """Raise a clear error unless ``value`` is an int (not bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{owner}: {name} must be >= {minimum}, got {value}")


def check_fits(owner: str, setting: str, distance: int, trained_length: int, fix: str) -> None:
    """Refuse settings whose largest rotary distance is one the model never saw in training."""
    if distance >= trained_length:
        raise ValueError(
            f"{owner}: {setting} reaches rotary distance {distance}, but the model was trained to "
            f"{trained_length} tokens (distances < {trained_length}); {fix}"
        )
