from __future__ import annotations

import math

from longreach.methods.base import Method, Part, method_config
from longreach.methods.vanilla import Vanilla

#: kind (its CLI name) -> transformers' rope_type
KINDS = {"linear": "linear", "dynamic-ntk": "dynamic", "yarn": "yarn"}


@method_config
class RopeScaling(Method):
    """The RoPE-scaling baselines, applied through the model's own rope parameters.

    ``kind``: ``"linear"`` (position interpolation), ``"dynamic-ntk"`` or ``"yarn"``, the names
    the command line uses.
    ``extend`` sets the model's ``rope_parameters`` and recomputes its frequencies; attention
    stays the model's own. Dynamic NTK changes frequencies as the input grows while transformers
    never re-rotates cached keys; ``extend`` re-rotates them when that happens, so cached
    decoding equals recomputing without a cache.

    Example:
        >>> RopeScaling("yarn", 4.0).spec()
        'yarn:factor=4.0'
    """

    kind: str
    factor: float
    cli_names = tuple(KINDS)
    attention = "model-rope"

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RopeScaling: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        factor = self.factor
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
            raise TypeError(f"RopeScaling: factor must be a number >= 1, got {factor!r}")
        if factor < 1:
            raise ValueError(f"RopeScaling: factor must be >= 1 (1 leaves the model unchanged), got {factor}")
        if self.log_scale_base is not None:
            raise ValueError("RopeScaling runs the model's own attention: log_scale_base does not apply")

    @property
    def cli_name(self) -> str:
        return self.kind

    @property
    def changes_attention(self) -> bool:
        return self.factor != 1

    @property
    def depends_on_length(self) -> bool:
        return self.kind == "dynamic-ntk"  # frequencies follow the longest position seen

    @property
    def rope_type(self) -> str:
        return KINDS[self.kind]

    @classmethod
    def implied_settings(cls, name: str) -> dict:
        return {"kind": name}

    def spec(self) -> str:
        return f"{self.cli_name}:factor={self.factor}"  # the CLI name gives the kind

    @classmethod
    def auto(cls, name: str, target_length: int, trained_length: int, sliding_window: int | None = None) -> RopeScaling:
        return cls.for_target(target_length, trained_length, **cls.implied_settings(name))

    def parts(self) -> tuple[Part, ...]:
        return Vanilla().parts()

    def max_length(self, trained_length: int) -> int | None:
        if self.kind == "dynamic-ntk":
            return None  # the frequencies follow the input length
        return math.floor(self.factor * trained_length)

    def suggest(self, length: int, trained_length: int) -> RopeScaling:
        return RopeScaling.for_target(length, trained_length, kind=self.kind)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, *, kind: str = "yarn", **common) -> RopeScaling:
        """factor = target / trained, rounded up to a quarter, at least 1.

        Example:
            >>> RopeScaling.for_target(32768, 8192, kind="linear")
            RopeScaling(kind='linear', factor=4.0)
        """
        factor = max(1.0, math.ceil(4 * target_length / trained_length) / 4)
        return cls(kind=kind, factor=factor, **common)
