"""The cache a forward is given is found under either of transformers' names for it."""

import pytest
import torch
from conftest import tiny_model
from transformers import DynamicCache

import longreach
from longreach.integrations.transformers.cache import EvictingLayer, LongReachCache
from longreach.integrations.transformers.forward_args import CACHE_NAMES, cache_keyword, given_cache, input_length


def test_the_cache_keyword_is_the_one_the_installed_transformers_takes():
    model = tiny_model("llama")
    keyword = cache_keyword(model.forward)
    assert keyword in CACHE_NAMES
    assert cache_keyword(model.base_model.forward) == keyword
    assert cache_keyword(lambda input_ids: None) == "past_key_values"


def test_given_cache_names_the_keyword_even_when_the_cache_is_none():
    cache = DynamicCache()
    assert given_cache({"cache": cache}) == ("cache", cache)
    assert given_cache({"past_key_values": None}) == ("past_key_values", None)
    assert given_cache({"input_ids": None}) == (None, None)


def test_input_length_reads_ids_embeddings_or_the_first_positional_argument():
    assert input_length((), {"input_ids": torch.zeros(2, 7)}) == 7
    assert input_length((), {"inputs_embeds": torch.zeros(1, 5, 16)}) == 5
    assert input_length((torch.zeros(1, 3),), {}) == 3
    assert input_length((), {}) == 0


# The old name on purpose: users' code still passes it (transformers 5.24 warns until 5.40).
@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", sorted({"past_key_values", cache_keyword(tiny_model("llama").forward)}))
def test_a_cache_given_under_either_accepted_name_is_the_one_the_method_evicts_from(name):
    model = tiny_model("llama", max_position_embeddings=32)
    longreach.extend(model, longreach.StreamingLLM(n_sink=2, window=6))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 128, (1, 20)), use_cache=True, **{name: cache})
    assert isinstance(cache, LongReachCache)
    assert all(isinstance(layer, EvictingLayer) and layer.keys.shape[-2] <= 8 for layer in cache.layers)
    assert cache.get_seq_length() == 20
