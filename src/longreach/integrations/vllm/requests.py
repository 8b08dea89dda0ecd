"""Each running request's keys and values as contiguous tensors, per layer, kept between steps.

vLLM's paged cache scatters a request's tokens over blocks. Gathering them back at every step (a
copy of the whole context per layer) and re-rotating every key for the plan's parts cost more than
the attention itself: decoding at 8k tokens took twice as long as vLLM's own attention. Kept
here, a step appends only its new tokens and the engine re-rotates only those (its key store),
as in the transformers integration. The price is memory: a second copy of each running request's
keys and values, and of its keys once per part that moves them, outside vLLM's KV cache budget.

The copies are KV memory too, so the plugin gives vLLM's paged cache only its share of the KV
budget (:func:`cache_share`): running requests' copies then fit in the rest.

The paged cache stays the source of truth: a copy is used only while it holds exactly the tokens
before the step's new ones, and is rebuilt from the blocks otherwise (a prefix-cache hit, a
request preempted and recomputed). Copies of finished and preempted requests are dropped when
the model runner hears of them.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from longreach.engine.append import append_tokens
from longreach.methods.base import Part


def cache_share(parts: tuple[Part, ...], budget: int) -> int:
    """The bytes of a KV budget left to vLLM's paged cache when each of its tokens may also be held
    here: its key and value once more, and its key once per part that moves keys.

    Example:
        >>> from longreach.methods import ReRoPE
        >>> cache_share(ReRoPE(window=64).parts(), 5_000)  # keys and values twice, keys once more
        2000
    """
    moved = sum(part.key_position is not None for part in parts)
    return budget * 2 // (4 + moved)


@dataclass
class LayerKV:
    """One request's keys and values at one layer, as the cache's layout: (1, Hkv, n, D)."""

    keys: torch.Tensor
    values: torch.Tensor
    rotated: dict = field(default_factory=dict)  # the engine's key store: keys re-rotated per part

    @property
    def length(self) -> int:
        return self.keys.shape[2]


class RunningRequests:
    """The copies of one worker process, by request id and layer name, and the batch's request ids
    (from the model runner the plugin's hook binds)."""

    def __init__(self) -> None:
        self._held: dict[str, dict[str, LayerKV]] = {}
        self._runner: Callable[[], object] | None = None

    def bind(self, runner: object) -> None:
        """Read the ids of each batch's requests from ``runner`` (vLLM's model runner)."""
        self._runner = weakref.ref(runner)

    def batch(self, count: int) -> list[str] | None:
        """The ids of the forward's ``count`` requests in the attention metadata's order; None when
        no runner is bound (then nothing is kept between steps)."""
        runner = self._runner() if self._runner is not None else None
        if runner is None:
            return None
        ids = runner.input_batch.req_ids[:count]
        if len(ids) != count or any(i is None for i in ids):
            raise RuntimeError(f"LongReach: the model runner's batch has {len(ids)} requests, the attention {count}")
        return list(ids)

    def drop(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            self._held.pop(request_id, None)

    def extend(
        self,
        request_id: str,
        layer_name: str,
        context: int,
        new_keys: torch.Tensor,
        new_values: torch.Tensor,
        read_blocks: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    ) -> LayerKV:
        """The request's keys and values at ``layer_name`` after appending this step's new ones
        (1, Hkv, m, D) to the ``context`` tokens before them, which come from the copy when it
        holds exactly those, else from ``read_blocks(context)`` (the paged cache)."""
        layers = self._held.setdefault(request_id, {})
        held = layers.get(layer_name)
        if held is None or held.length != context:
            held = LayerKV(*read_blocks(context))
        held = LayerKV(append_tokens(held.keys, new_keys), append_tokens(held.values, new_values), held.rotated)
        layers[layer_name] = held
        return held


#: The running requests of this process.
RUNNING = RunningRequests()
