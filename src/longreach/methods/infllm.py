from __future__ import annotations

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config

STORAGES = ("auto", "ram", "mmap")
BLOCK_SCORINGS = ("representative", "best-key")
MEMORY_POSITIONS = ("constant", "ordered")


@method_config
class InfLLM(Method):
    """InfLLM: a local window at true positions plus a block memory searched per query block.

    The last ``n_local`` tokens keep their positions. Everything older is memory: the first
    ``n_init`` tokens, the ``topk`` blocks of ``block_size`` tokens whose representative keys best
    match the execution block's queries, and the tokens that left the window but do not fill a
    block yet. Memory keys sit at position 0 and the query at ``n_local - 1``, so every memory
    token is seen at the same distance (as in the reference). A block's representative is the
    mean of its ``repr_topk`` keys that received the most attention while in the window; blocks
    are ranked once per layer, summing every head's match, and shared by all heads (as in the
    reference); ``block_scoring="best-key"`` ranks a block by the best match of any of its keys
    instead (see :func:`~longreach.engine.memory.attend.block_relevance`).

    ``memory_positions="ordered"`` reads the memory as if the blocks not retrieved were cut out
    of the input: the first tokens, the retrieved blocks in their order and the leftovers sit
    right before the window at consecutive positions, so a fact keeps the order of its tokens
    (the constant distance of the reference gives every memory token the same position). With
    every block retrieved this is the model's own attention; its largest distance,
    :attr:`memory_reach`, must be one the model was trained on.

    Until the input is longer than ``n_init + n_local`` (within the trained length) every token
    is local: short inputs are read exactly as by the model itself.

    ``storage`` says where blocks live: ``"auto"`` (pinned CPU memory with at most
    ``max_cached_blocks`` per layer and KV head on the GPU when the model is on CUDA, plain RAM
    on CPU), ``"ram"``, or ``"mmap"`` (a memory-mapped file in ``storage_dir`` or a temporary
    folder; RAM holds only the representatives and ``max_cached_blocks`` blocks per layer and KV
    head), so the RAM footprint is the user's choice, not the context length's.

    Example:
        >>> InfLLM.for_model(4096)
        InfLLM(n_local=2048)
        >>> InfLLM(n_local=2048, topk=8).parts()[1].name
        'memory'
    """

    n_init: int = 128
    n_local: int = 4096
    block_size: int = 128
    topk: int = 16
    repr_topk: int = 4
    exec_block: int = 512
    max_cached_blocks: int = 32
    block_scoring: str = "representative"
    memory_positions: str = "constant"
    storage: str = "auto"
    storage_dir: str | None = None
    cli_names = ("infllm",)
    attention = "memory"

    def validate(self) -> None:
        check_int("InfLLM", "n_init", self.n_init, 0)
        for name in ("n_local", "block_size", "topk", "repr_topk", "exec_block", "max_cached_blocks"):
            check_int("InfLLM", name, getattr(self, name), 1)
        if self.repr_topk > self.block_size:
            raise ValueError(f"InfLLM: repr_topk ({self.repr_topk}) must be <= block_size ({self.block_size})")
        if self.topk > self.max_cached_blocks:
            raise ValueError(
                f"InfLLM: topk ({self.topk}) must be <= max_cached_blocks ({self.max_cached_blocks}): every "
                "retrieved block must fit in the device cache at once"
            )
        if self.exec_block > self.n_local:
            raise ValueError(
                f"InfLLM: exec_block ({self.exec_block}) must be <= n_local ({self.n_local}), so a query block "
                "never needs memory written during its own step"
            )
        if self.block_scoring not in BLOCK_SCORINGS:
            raise ValueError(
                f"InfLLM: block_scoring must be one of {', '.join(BLOCK_SCORINGS)}, got {self.block_scoring!r}"
            )
        if self.memory_positions not in MEMORY_POSITIONS:
            raise ValueError(
                f"InfLLM: memory_positions must be one of {', '.join(MEMORY_POSITIONS)}, got {self.memory_positions!r}"
            )
        if self.storage not in STORAGES:
            raise ValueError(f"InfLLM: storage must be one of {', '.join(STORAGES)}, got {self.storage!r}")
        if self.storage_dir is not None and self.storage != "mmap":
            raise ValueError("InfLLM: storage_dir is only used with storage='mmap'")

    @property
    def prefill_chunk(self) -> int:
        """Execution blocks are cut at positions, so a long input is read ``exec_block`` at a time."""
        return self.exec_block

    def check_window(self, sliding_window: int, trained_length: int) -> None:
        """Memory tokens sit at distance ``n_local - 1`` (ordered: up to :attr:`memory_reach`),
        which the model must have attended."""
        if self.memory_positions == "ordered" and self.memory_reach >= sliding_window:
            raise ValueError(
                f"InfLLM: this model attends at most {sliding_window} tokens back (sliding window), but ordered "
                f"memory reaches distance {self.memory_reach}: retrieve fewer blocks (topk) or use "
                "memory_positions='constant'"
            )
        if self.n_local > sliding_window:
            raise ValueError(
                f"InfLLM: this model attends at most {sliding_window} tokens back (sliding window), so the local "
                f"window n_local ({self.n_local}) and the memory's distance must fit in it: use n_local <= "
                f"{sliding_window} (InfLLM.for_model({trained_length}, n_local={sliding_window}), or "
                f"infllm:n_local={sliding_window} on the command line)"
            )

    @property
    def vanilla_length(self) -> int:
        """Inputs up to this many tokens are read with every token local (exactly the model)."""
        return self.n_init + self.n_local

    @property
    def memory_reach(self) -> int:
        """The largest rotary distance ordered memory can put between a query and a memory key:
        the window, up to an execution block and a block of leftovers, the retrieved blocks and the
        first tokens (a bound: the distance also depends on where blocks were cut)."""
        return self.n_init + (self.topk + 1) * self.block_size + self.exec_block + self.n_local - 1

    def local_start(self, i: torch.Tensor) -> torch.Tensor:
        """First key position of query ``i``'s local window."""
        return torch.where(i < self.vanilla_length, torch.zeros_like(i), i - self.n_local + 1)

    def parts(self) -> tuple[Part, ...]:
        """The plan when every block is retrieved (memory = everything outside the window). With
        fewer blocks than memory holds, the memory part's region is chosen by retrieval."""
        local = Part("local", key_span=lambda i: (self.local_start(i), i + 1))
        return (local, self.memory_part(blocks_end=self.n_init, retrieved=0))

    def memory_part(self, blocks_end: int, retrieved: int) -> Part:
        """The memory part over the keys the cache still holds (the first ``n_init`` tokens and the
        tokens from ``blocks_end`` on that left the window), read together with ``retrieved``
        blocks. The query's position here is also the one it reads the retrieved blocks from."""
        key_span = lambda i: (torch.zeros_like(i), self.local_start(i))  # noqa: E731
        if self.memory_positions == "constant":
            n_local = self.n_local
            return Part(
                "memory",
                key_span,
                query_position=lambda i: torch.full_like(i, n_local - 1),
                key_position=torch.zeros_like,
            )
        # The blocks not retrieved are cut out: the first tokens move up to meet the retrieved ones.
        shift, n_init = blocks_end - retrieved * self.block_size - self.n_init, self.n_init
        if shift == 0:
            return Part("memory", key_span)
        return Part("memory", key_span, key_position=lambda j: torch.where(j < n_init, j + shift, j))

    def block_key_positions(self, blocks_end: int, retrieved: int) -> torch.Tensor | None:
        """Positions of the ``retrieved`` blocks' keys, in ascending block order, as
        :meth:`memory_part` places them; ``None`` where they stay at position 0, where blocks are
        stored."""
        if self.memory_positions == "constant":
            return None
        return torch.arange(blocks_end - retrieved * self.block_size, blocks_end)

    def check_model(self, trained_length: int) -> None:
        check_fits(
            "InfLLM",
            f"n_init + n_local = {self.vanilla_length}",
            self.vanilla_length - 1,
            trained_length,
            f"use InfLLM.for_model({trained_length})",
        )
        if self.memory_positions == "ordered":
            check_fits(
                "InfLLM",
                f"ordered memory (memory_reach = {self.memory_reach})",
                self.memory_reach,
                trained_length,
                "retrieve fewer blocks (topk), use a narrower window (n_local) or memory_positions='constant'",
            )

    @classmethod
    def for_model(cls, trained_length: int, n_local: int | None = None, **common) -> InfLLM:
        """The reference's settings with the local window at half the trained length (4,096 on an 8k
        model, the reference's own Mistral and Llama-3 configs), scaled down for short-context
        models so every setting stays valid."""
        check_int("InfLLM.for_model", "trained_length", trained_length, 16)
        n_local = trained_length // 2 if n_local is None else n_local
        defaults = {
            "n_local": n_local,
            "n_init": min(128, trained_length - n_local),
            "exec_block": min(512, n_local),
            "block_size": min(128, max(1, n_local // 8)),
        }
        defaults["repr_topk"] = min(4, defaults["block_size"])
        return cls(**{**defaults, **common})

    @classmethod
    def auto(cls, name: str, target_length: int, trained_length: int, sliding_window: int | None = None) -> InfLLM:
        """:meth:`for_target`, with the local window narrowed to a model's sliding window (memory
        tokens sit at distance ``n_local - 1``, which the model must have attended)."""
        n_local = trained_length // 2 if sliding_window is None else min(trained_length // 2, sliding_window)
        return cls.for_target(target_length, trained_length, n_local=n_local)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **common) -> InfLLM:
        """The reference's settings (:meth:`for_model`) with blocks ranked by their best key and as
        many blocks retrieved as fill the trained length (64 of 128 tokens on an 8k model, where
        the reference retrieves 16). On SmolLM2-135M, facts told in prose: 64 blocks found 12 of
        15 at 16k and 7 of 10 at 32k where 16 found 9 and 4, passkeys (16k-64k) and RULER within
        their noise (docs/results.md, "Needles in natural text"); best-key ranking found 9 of 15 at
        16k where the reference's found 2 of 10, with passkeys and RULER figures no worse. With
        ``memory_positions="ordered"`` the blocks are as many as keep :attr:`memory_reach` inside
        the trained length. InfLLM covers any length: the target does not change the settings.

        Example:
            >>> InfLLM.for_target(32768, 8192)
            InfLLM(topk=64, max_cached_blocks=64, block_scoring='best-key')
        """
        shape = cls.for_model(trained_length, **{**common, "topk": 1})  # the window and blocks, one retrieved
        topk = trained_length // shape.block_size
        if shape.memory_positions == "ordered":  # each block more moves the reach one block further
            topk = min(topk, 1 + (trained_length - 1 - shape.memory_reach) // shape.block_size)
        topk = common.get("topk", max(1, topk))
        settings = {"block_scoring": "best-key", "topk": topk, "max_cached_blocks": max(32, topk), **common}
        return cls.for_model(trained_length, **settings)
