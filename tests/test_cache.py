"""The cache layers: a sliding window appends and drops in place, with the values of cat and drop."""

import torch

from longreach.cache import EvictingLayer


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
