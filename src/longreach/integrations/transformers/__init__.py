"""LongReach inside transformers: ``extend``/``restore`` through the ``AttentionInterface``.

``install`` puts a method on a model and takes it off; ``attention`` is the registered attention
function; ``rows`` handles padding; ``cache`` is the cache that keeps re-rotated keys and evicts; ``generate`` fits
``model.generate`` to an extended model; ``prefill`` reads long inputs in chunks;
``rope_scaling`` runs the RoPE-scaling baselines; ``forward_args`` reads forward arguments.
"""

from longreach.integrations.transformers.install import current_method, extend, restore
from longreach.integrations.transformers.prefill import forward_in_chunks, prefill

__all__ = ["current_method", "extend", "forward_in_chunks", "prefill", "restore"]
