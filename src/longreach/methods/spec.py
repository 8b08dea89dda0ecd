"""Method specs as users write them: ``NAME``, ``NAME:key=value,...`` or ``NAME:auto``."""

from __future__ import annotations

import dataclasses

from longreach.methods.base import Method
from longreach.methods.registry import METHODS


class MethodSpecError(ValueError):
    """A method spec that names no method or gives bad settings."""


def is_auto(spec: str) -> bool:
    """Whether ``spec`` asks for settings picked per input length (``NAME:auto``).

    Example:
        >>> is_auto("self-extend:auto"), is_auto("self-extend:group_size=4,window=1024")
        (True, False)
    """
    return spec.strip().partition(":")[2].strip() == "auto"


def parse_method(
    spec: str, *, target_length: int | None = None, trained_length: int | None = None, sliding_window: int | None = None
) -> Method:
    """Build a method config from a spec.

    ``NAME:auto`` picks settings for ``target_length`` on a model trained to ``trained_length``
    (within its ``sliding_window``, if it has one).

    Example:
        >>> parse_method("self-extend:group_size=4,window=1024")
        SelfExtend(group_size=4, window=1024)
    """
    name, _, settings = spec.strip().partition(":")
    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise MethodSpecError(f"unknown method {name!r} in {spec!r}; known methods: {known}")
    cls = METHODS[name]
    implied = cls.implied_settings(name)
    fields = {f.name: f for f in sorted(dataclasses.fields(cls), key=lambda f: f.kw_only) if f.name not in implied}
    if is_auto(spec):
        if target_length is None or trained_length is None:
            raise MethodSpecError(f"{spec!r} needs a target length to pick settings for")
        try:
            return cls.auto(name, target_length, trained_length, sliding_window)
        except (TypeError, ValueError) as error:
            raise MethodSpecError(f"{spec!r}: {error}") from None
    values = {}
    for item in filter(None, (s.strip() for s in settings.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not raw.strip():
            raise MethodSpecError(f"malformed setting {item!r} in {spec!r}; expected key=value")
        if key not in fields:
            allowed = ", ".join(fields) or "none"
            raise MethodSpecError(f"{name} has no setting {key!r}; its settings: {allowed}")
        values[key] = _parse_value(raw.strip(), spec, accepts_text="str" in str(fields[key].type))
    missing = [f for f, field in fields.items() if f not in values and field.default is dataclasses.MISSING]
    if missing:
        raise MethodSpecError(f"{spec!r} is missing {', '.join(missing)} (or use {name}:auto)")
    try:
        return cls.from_settings(name, {**values, **implied})
    except (TypeError, ValueError) as error:
        raise MethodSpecError(f"{spec!r}: {error}") from None


def _parse_value(raw: str, spec: str, *, accepts_text: bool = False) -> object:
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(raw)
        except ValueError:
            pass
    try:
        return parse_length(raw)
    except ValueError:
        if accepts_text:  # e.g. storage=mmap; the config validates the word itself
            return raw
        raise MethodSpecError(f"cannot read value {raw!r} in {spec!r}") from None


def parse_length(text: str) -> int:
    """``"16k"`` -> 16384, ``"4096"`` -> 4096, ``"1.5k"`` -> 1536.

    Example:
        >>> parse_length("16k")
        16384
    """
    raw = text.strip().lower()
    scale = 1
    if raw.endswith("k"):
        raw, scale = raw[:-1], 1024
    elif raw.endswith("m"):
        raw, scale = raw[:-1], 1024 * 1024
    try:
        value = float(raw) * scale
    except ValueError:
        raise ValueError(f"bad length {text!r}; use a token count such as 4096 or 4k") from None
    if value < 1 or value != int(value):
        raise ValueError(f"bad length {text!r}; use a whole positive token count such as 4096 or 4k")
    return int(value)
