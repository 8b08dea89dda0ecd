"""The cache layers: a sliding window appends and drops in place, with the values of cat and drop."""

import pytest
import torch
import transformers
from transformers import DynamicCache
from transformers.cache_utils import DynamicSlidingWindowLayer

from longreach.integrations.transformers.cache import AppendingLayer, EvictingLayer, LongReachCache


def test_a_sliding_cache_layer_appends_and_drops_without_copying_its_window():
    layer, reference = EvictingLayer(), torch.randn(1, 2, 100, 4)
    layer.update(reference, reference)
    sinks, window = 4, 60
    layer.keep((torch.arange(100) < sinks) | (torch.arange(100) >= 100 - window))
    storages = set()
    for step in range(64):
        token = torch.randn(1, 2, 1, 4)
        reference = torch.cat((reference, token), dim=-2)
        layer.update(token, token)
        n = layer.keys.shape[-2]
        layer.keep((torch.arange(n) < sinks) | (torch.arange(n) > sinks))  # drop the oldest window key
        storages.add(layer.keys.untyped_storage().data_ptr())
        expected = torch.cat((reference[..., :sinks, :], reference[..., -window:, :]), dim=-2)
        assert torch.equal(layer.keys, expected) and torch.equal(layer.values, expected)
        assert layer.token_index.tolist() == [*range(sinks), *range(101 + step - window, 101 + step)]
    assert len(storages) <= 64 // 7  # one copy every ~window/8 steps, not one per step


def test_an_evicting_method_takes_over_sliding_window_layers_unless_they_already_dropped_tokens():
    config = transformers.MistralConfig(
        sliding_window=4, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, hidden_size=8
    )
    fresh = DynamicCache(config=config)
    assert type(fresh.layers[0]) is DynamicSlidingWindowLayer
    LongReachCache.adopt(fresh, layer_class=EvictingLayer)
    assert type(fresh.layers[0]) is EvictingLayer
    kept = DynamicCache(config=config)
    LongReachCache.adopt(kept, layer_class=AppendingLayer)  # a plan method leaves the window to the model
    assert type(kept.layers[0]) is DynamicSlidingWindowLayer
    used = DynamicCache(config=config)
    keys = torch.randn(1, 1, 6, 4)
    used.update(keys, keys, 0)  # the window keeps the last 3 of 6
    with pytest.raises(ValueError, match="already dropped 3 tokens"):
        LongReachCache.adopt(used, layer_class=EvictingLayer)
