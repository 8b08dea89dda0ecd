"""The attention engine: re-rotation (``rotary``), kernels that return the log-sum-exp
(``kernels``), plan execution (``attention``), what calls at the same positions share (``memo``),
which keys a plan never reads again (``eviction``), in-place cache buffers (``append``), and
InfLLM's block memory (``memory/``)."""

from longreach.engine.attention import Scoring, attend
from longreach.engine.kernels import attention_with_lse, merge_by_lse
from longreach.engine.rotary import RotaryLayout

__all__ = ["RotaryLayout", "Scoring", "attend", "attention_with_lse", "merge_by_lse"]
