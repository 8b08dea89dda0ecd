"""InfLLM's block memory: attention over the held keys plus retrieved blocks (``attend``), where
the blocks live (``store``), what persists between calls (``state``), and the C heap (``heap``)."""

from longreach.engine.memory.attend import attend_with_memory, execution_blocks, select_blocks
from longreach.engine.memory.state import MemorySettings, MemoryState
from longreach.engine.memory.store import BlockStore

__all__ = ["BlockStore", "MemorySettings", "MemoryState", "attend_with_memory", "execution_blocks", "select_blocks"]
