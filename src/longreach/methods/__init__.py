"""Method configs: each a small declarative position plan over the one engine."""

from longreach.methods.base import InputTooLongError, Method, Part
from longreach.methods.self_extend import SelfExtend
from longreach.methods.spec import MethodSpecError, parse_length, parse_method
from longreach.methods.vanilla import Vanilla

#: Methods by CLI name.
METHODS: dict[str, type[Method]] = {cls.cli_name: cls for cls in (Vanilla, SelfExtend)}

__all__ = [
    "METHODS",
    "InputTooLongError",
    "Method",
    "MethodSpecError",
    "Part",
    "SelfExtend",
    "Vanilla",
    "parse_length",
    "parse_method",
]
