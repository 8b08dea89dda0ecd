"""Method configs: each a small declarative position plan over the one engine."""

from longreach.methods.base import InputTooLongError, Method, Part
from longreach.methods.coverage import check_length, method_for
from longreach.methods.dual_chunk import DualChunk
from longreach.methods.infllm import InfLLM
from longreach.methods.lm_infinite import LMInfinite
from longreach.methods.registry import METHODS
from longreach.methods.rerope import ReRoPE
from longreach.methods.rope_scaling import RopeScaling
from longreach.methods.self_extend import SelfExtend
from longreach.methods.spec import MethodSpecError, is_auto, parse_length, parse_method
from longreach.methods.streaming_llm import StreamingLLM
from longreach.methods.string import String
from longreach.methods.vanilla import Vanilla

__all__ = [
    "METHODS",
    "DualChunk",
    "InfLLM",
    "InputTooLongError",
    "LMInfinite",
    "Method",
    "MethodSpecError",
    "Part",
    "ReRoPE",
    "RopeScaling",
    "SelfExtend",
    "StreamingLLM",
    "String",
    "Vanilla",
    "check_length",
    "is_auto",
    "method_for",
    "parse_length",
    "parse_method",
]
