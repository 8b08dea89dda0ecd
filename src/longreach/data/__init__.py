"""Data shipped with LongReach: one public-domain text, the default ``--text`` of the commands.

``DEFAULT_TEXT`` is the one place that names it (see README.md beside it for its source and
licence): ``ppl``, ``niah-text``, ``niah-natural`` and ``longreach perplexity`` read it when no ``--text`` is given.

Example:
    >>> DEFAULT_TEXT.name
    'alice_in_wonderland.txt'
"""

from __future__ import annotations

from pathlib import Path

#: Lewis Carroll, Alice's Adventures in Wonderland (1865): about 39k tokens with SmolLM2's tokenizer.
DEFAULT_TEXT = Path(__file__).with_name("alice_in_wonderland.txt")
