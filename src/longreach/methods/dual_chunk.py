from __future__ import annotations

import torch

from longreach.methods.base import Method, Part, check_fits, check_int, method_config


@method_config
class DualChunk(Method):
    """Dual Chunk Attention (ChunkLlama): keys sit at their position inside a chunk.

    With ``c = chunk_size - local_window``, key ``j`` is at ``j % c``. A query ``i`` in the same
    chunk as the key is at ``i % c`` (so distances are exact), in the next chunk at
    ``min(i % c + c, chunk_size)``, and farther on at ``min(2c - 1, chunk_size)``: no distance
    exceeds ``min(2c - 1, chunk_size)`` whatever the input length.

    The farther ("inter-chunk") query position follows ChunkLlama's reference
    (``chunkllama_attn_replace.py``, ``forward``): it rotates those queries with its
    next-chunk table (``min(r + c, chunk_size)`` for ``r`` in ``[0, c)``) read at its last row,
    ``r = c - 1``, in prefill and in decoding alike. That is ``chunk_size`` only while
    ``2 * local_window < chunk_size``; with a wider local window the table stops at
    ``2c - 1 < chunk_size``, and a plan that put these queries at ``chunk_size`` would no longer
    compute the reference's attention.

    ``mscale`` applies an attention temperature past the trained length ``T``: q and k scaled by
    ``0.05 * ln(length / T) + 1`` when ``length > T`` (``get_mscale`` in the reference's Llama
    patch), so the scores by its square. Here ``length`` is the length each query reads
    (``i + 1``), so prefill, chunked prefill and cached decoding agree exactly. The reference's
    Llama patch instead uses ``kv_seq_len`` (cached plus new tokens of the whole forward call) for
    every query and key of that call, and rebuilds its tables only when a call is longer than any
    before, so the factor is that of the longest call so far and cached keys keep the factor of
    the call that wrote them; its Qwen patch (``chunkqwen_attn_replace.py``) applies none.

    Example:
        >>> DualChunk.for_model(8192)
        DualChunk(chunk_size=6144, local_window=512)
    """

    chunk_size: int
    local_window: int
    mscale: bool = True
    cli_names = ("dual-chunk",)

    def validate(self) -> None:
        check_int("DualChunk", "chunk_size", self.chunk_size, 2)
        check_int("DualChunk", "local_window", self.local_window, 0)
        if self.local_window >= self.chunk_size:
            raise ValueError(
                f"DualChunk: local_window ({self.local_window}) must be smaller than chunk_size "
                f"({self.chunk_size}); chunks advance by chunk_size - local_window tokens"
            )
        if not isinstance(self.mscale, bool):
            raise TypeError(f"DualChunk: mscale must be True or False, got {self.mscale!r}")

    def parts(self) -> tuple[Part, ...]:
        size = self.chunk_size
        c = size - self.local_window

        def start(i: torch.Tensor) -> torch.Tensor:
            return torch.div(i, c, rounding_mode="floor") * c

        # Inside a chunk i % c - j % c = i - j: true positions give the same scores, unrotated.
        intra = Part("intra-chunk", key_span=lambda i: (start(i), i + 1))
        previous = Part(
            "previous-chunk",
            key_span=lambda i: (start(i) - c, start(i)),
            query_position=lambda i: (i.remainder(c) + c).clamp_max(size),
            key_position=lambda j: j.remainder(c),
        )
        older = Part(
            "older-chunks",
            key_span=lambda i: (torch.zeros_like(i), start(i) - c),
            # The reference's next-chunk position at its last row, min(c - 1 + c, chunk_size).
            query_position=lambda i: torch.full_like(i, min(2 * c - 1, size)),
            key_position=lambda j: j.remainder(c),
        )
        return (intra, previous, older)

    def query_scale(self, positions: torch.Tensor, trained_length: int) -> torch.Tensor | None:
        scale = super().query_scale(positions, trained_length)
        if not self.mscale:
            return scale
        ratio = (positions.clamp_min(0).to(torch.float64) + 1) / trained_length
        # q and k both carry the factor, so scores carry its square.
        temperature = (0.05 * torch.log(ratio.clamp_min(1.0)) + 1) ** 2
        return temperature if scale is None else scale * temperature

    def check_model(self, trained_length: int) -> None:
        # The largest distance: a next-chunk or older-chunk query at min(2c - 1, chunk_size) over
        # a key at 0 (inside a chunk distances stay below c).
        distance = min(2 * (self.chunk_size - self.local_window) - 1, self.chunk_size)
        setting = f"chunk_size={self.chunk_size}"
        if distance < self.chunk_size:
            setting += f", local_window={self.local_window}"
        check_fits("DualChunk", setting, distance, trained_length, f"use DualChunk.for_model({trained_length})")

    @classmethod
    def for_model(cls, trained_length: int, **common) -> DualChunk:
        """ChunkLlama's defaults: chunk_size 3/4 and local_window 1/16 of the trained length.

        Example:
            >>> DualChunk.for_model(4096)
            DualChunk(chunk_size=3072, local_window=256)
        """
        check_int("DualChunk.for_model", "trained_length", trained_length, 16)
        return cls(chunk_size=trained_length * 3 // 4, local_window=trained_length // 16, **common)

    @classmethod
    def for_target(cls, target_length: int, trained_length: int, **common) -> DualChunk:
        """``for_model``'s chunks (they cover any length) without the temperature.

        ChunkLlama's Llama patch does apply one (q and k by ``0.05 * ln(kv_seq_len / trained) + 1``
        once a forward call reads more than the trained length; see the class docstring for how
        LongReach's per-query ``mscale`` differs). It is left off here because it measured worse:
        on SmolLM2 (docs/results.md) it lost 3 of 5 needles at 4x the trained length that the
        plain plan finds, at the same perplexity.

        Example:
            >>> DualChunk.for_target(32768, 8192)
            DualChunk(chunk_size=6144, local_window=512, mscale=False)
        """
        return cls.for_model(trained_length, **{"mscale": False, **common})
