"""Every method config, by the names the command line and ``parse_method`` know it under."""

from __future__ import annotations

from longreach.methods.base import Method
from longreach.methods.dual_chunk import DualChunk
from longreach.methods.infllm import InfLLM
from longreach.methods.lm_infinite import LMInfinite
from longreach.methods.rerope import ReRoPE
from longreach.methods.rope_scaling import RopeScaling
from longreach.methods.self_extend import SelfExtend
from longreach.methods.streaming_llm import StreamingLLM
from longreach.methods.string import String
from longreach.methods.vanilla import Vanilla

#: Method classes by CLI name.
METHODS: dict[str, type[Method]] = {
    name: cls
    for cls in (Vanilla, SelfExtend, DualChunk, LMInfinite, ReRoPE, String, StreamingLLM, InfLLM, RopeScaling)
    for name in cls.cli_names
}
