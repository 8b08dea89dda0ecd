"""The attention engine: re-rotation, LSE kernels, plan execution and a dense reference."""

from longreach.engine.attention import attend
from longreach.engine.kernels import attention_with_lse, merge_by_lse
from longreach.engine.rotary import RotaryLayout

__all__ = ["RotaryLayout", "attend", "attention_with_lse", "merge_by_lse"]
