"""InfLLM: the memory executor against the dense formulas, retrieval, the block store's LRU, chunked
prefill, padding, and errors."""

import platform
from dataclasses import replace

import pytest
import torch
from conftest import attention_inputs, left_pad, logits, tiny_model
from dense_reference import rope
from formulas import formula_for_inputs
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DynamicCache

import longreach
from longreach.engine.attention import Scoring
from longreach.engine.memory import attend as memory_attention
from longreach.engine.memory.attend import attend_with_memory, select_blocks
from longreach.engine.memory.heap import release_free_heap
from longreach.engine.memory.state import MemoryState
from longreach.engine.memory.store import BlockStore
from longreach.engine.rotary import RotaryLayout
from longreach.integrations.transformers import install
from longreach.integrations.transformers.forward_args import cache_kwargs
from longreach.methods import parse_method


@st.composite
def memory_cases(draw):
    n_local = draw(st.integers(1, 12))
    block_size = draw(st.integers(1, 5))
    n_key = draw(st.integers(1, 48))
    cuts = sorted(draw(st.sets(st.integers(1, n_key - 1), max_size=4))) if n_key > 1 else []
    return dict(
        method=longreach.InfLLM(
            n_init=draw(st.integers(0, 4)),
            n_local=n_local,
            block_size=block_size,
            topk=64,
            repr_topk=draw(st.integers(1, block_size)),
            exec_block=draw(st.integers(1, n_local)),
            max_cached_blocks=64,
            memory_positions=draw(st.sampled_from(["constant", "ordered"])),
            log_scale_base=draw(st.one_of(st.none(), st.integers(2, 40))),
        ),
        batch=draw(st.integers(1, 2)),
        kv_heads=draw(st.integers(1, 2)),
        group=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([8, 16])),
        rotary_fraction=draw(st.sampled_from([0.5, 1.0])),
        interleaved=draw(st.booleans()),
        n_key=n_key,
        n_query=n_key,
        pad=0,
        seed=draw(st.integers(0, 2**16)),
        # Calls: one prefill, or a chunked prefill, ending with token-by-token decoding.
        cuts=cuts + list(range(max(cuts, default=0) + 1, n_key)) if draw(st.booleans()) else cuts,
    )


def rotated_inputs(case):
    """The case's inputs, its queries and keys rotated at their true positions, and its layout."""
    x = attention_inputs(case)
    positions, inv_freq, interleaved = x["key_positions"], x["inv_freq"], case["interleaved"]
    queries = rope(x["raw_q"], positions, inv_freq, interleaved).float()
    keys = rope(x["raw_k"], positions, inv_freq, interleaved).float()
    return x, queries, keys, RotaryLayout(inv_freq, interleaved)


def read_in_calls(method, scoring, x, queries, keys, spans):
    """The memory executor over calls reading the query ``spans`` in order, keeping only the keys
    it keeps (like the cache); returns (each call's output, final state, held key indices)."""
    positions = x["key_positions"]
    state, held, outputs = MemoryState.empty(method), torch.zeros(0, dtype=torch.long), []
    for a, b in spans:
        held = torch.cat((held, torch.arange(a, b)))
        out = attend_with_memory(
            queries[:, :, a:b],
            keys[:, :, held],
            x["value"][:, :, held],
            method,
            scoring,
            state,
            query_positions=positions[a:b],
            key_positions=positions[held],
            query_scale=method.query_scale(positions[a:b], 64),
        )
        kept = state.resident(positions[held])
        state.keep(kept)
        held = held[kept]
        outputs.append(out)
    return outputs, state, held


def run_calls(case, method=None):
    """The memory executor over a sequence of calls, keeping only the keys it keeps (like the
    cache); returns (output of every query, formula output, final state)."""
    method = method or case["method"]
    x, queries, keys, layout = rotated_inputs(case)
    edges = [0, *sorted(set(case["cuts"])), case["n_key"]]
    spans = list(zip(edges, edges[1:], strict=False))
    outputs, state, held = read_in_calls(method, Scoring(layout, scale=x["scale"]), x, queries, keys, spans)
    expected = formula_for_inputs(method, x, interleaved=case["interleaved"], trained_length=64)
    return torch.cat(outputs, dim=2), expected, state, held


@settings(max_examples=120, deadline=None)
@given(memory_cases())
def test_memory_attention_with_every_block_retrieved_matches_the_formulas(case):
    got, expected, state, held = run_calls(case)
    torch.testing.assert_close(got.double(), expected, atol=3e-5, rtol=1e-4)
    method = case["method"]
    # The cache holds the first tokens, less than a block of leftovers and the window.
    assert len(held) <= method.n_init + method.block_size + method.n_local + max(case["cuts"] + [0], default=0) + 1
    blocks = state.store.count if state.store is not None else 0
    assert state.blocks_end == method.n_init + blocks * method.block_size


def ram_store(kv_heads: int, block_size: int, head_dim: int) -> BlockStore:
    """An empty one-row float32 store in RAM, for tests that fill it by hand."""
    return BlockStore(
        rows=1,
        kv_heads=kv_heads,
        block_size=block_size,
        head_dim=head_dim,
        dtype=torch.float32,
        device=torch.device("cpu"),
        storage="ram",
        max_cached_blocks=4,
    )


def test_retrieval_finds_the_block_that_holds_a_planted_key():
    torch.manual_seed(0)
    kv_heads, group, dim, size, n_blocks = 2, 2, 16, 4, 12
    store = ram_store(kv_heads, size, dim)
    needle = torch.randn(kv_heads, dim)
    planted = 7  # the block holding the needle; only KV head 1 sees it clearly
    for block in range(n_blocks):
        keys = 0.1 * torch.randn(1, kv_heads, size, dim)
        if block == planted:
            keys[0, 1, 2] = 4 * needle[1]
        store.add(keys, torch.randn_like(keys), keys.mean(dim=2))
    queries = needle.repeat_interleave(group, dim=0)[None, :, None, :] + 0.05 * torch.randn(1, kv_heads * group, 6, dim)
    chosen = select_blocks(queries, store, topk=1)
    assert chosen.shape == (1, kv_heads, 1)
    assert chosen[0, :, 0].tolist() == [planted, planted]  # one ranking, shared by every head
    # With room for every block, every block is read.
    assert select_blocks(queries, store, topk=n_blocks)[0, 0].tolist() == list(range(n_blocks))


@pytest.mark.parametrize("storage", ["mmap", "pinned"])
def test_cached_storage_holds_at_most_max_cached_blocks_and_reads_what_ram_reads(storage, tmp_path):
    torch.manual_seed(1)
    shape = dict(rows=2, kv_heads=3, block_size=4, head_dim=8, dtype=torch.float32, device=torch.device("cpu"))
    ram = BlockStore(**shape, storage="ram", max_cached_blocks=3)
    cached = BlockStore(
        **shape, storage=storage, max_cached_blocks=3, directory=str(tmp_path) if storage == "mmap" else None
    )
    added = []
    for _ in range(70):  # more than one storage segment
        keys, values = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8)
        added.append((keys, values))
        for store in (ram, cached):
            store.add(keys, values, keys.mean(dim=2))
    generator = torch.Generator().manual_seed(2)
    for draw in range(40):
        ids = torch.stack([torch.randperm(70, generator=generator)[:3] for _ in range(6)]).view(2, 3, 3).sort().values
        if draw % 2:  # as retrieval asks: the same blocks for every head of a row
            ids = ids[:, :1].expand(2, 3, 3)
        for kind in (0, 1):  # keys, values: each (row, head) reads its own blocks, in the order asked
            expected = torch.stack(
                [
                    torch.stack([torch.cat([added[b][kind][r, h] for b in ids[r, h].tolist()]) for h in range(3)])
                    for r in range(2)
                ]
            )
            assert torch.equal(ram.gather(ids)[kind], expected)
            assert torch.equal(cached.gather(ids)[kind], expected)
        assert max(cached.cached_blocks()) <= 3
    assert cached.loads > 3 * 6  # the cache really evicted and reloaded
    assert list(tmp_path.iterdir()) == []  # memory-mapped files are unlinked at once


def test_infllm_reduces_to_the_model_up_to_n_init_plus_n_local():
    for family in ("llama", "qwen2", "mistral"):
        model = tiny_model(family)
        ids = torch.randint(3, 128, (2, 48))
        vanilla = logits(model, ids)
        longreach.extend(
            model, longreach.InfLLM(n_init=8, n_local=40, block_size=4, topk=2, exec_block=16, max_cached_blocks=4)
        )
        assert (logits(model, ids) - vanilla).abs().max() <= 1e-5, family


TRAINED = 32


def general_path_for_one_query(call, query, key, value, key_positions, position):
    return memory_attention._attend_in_execution_blocks(
        call, query, key, value, torch.tensor([position]), key_positions
    )


@pytest.mark.parametrize(
    ("pad", "sliding_window", "scoring", "memory_positions"),
    [
        (0, None, "representative", "constant"),
        (5, None, "representative", "constant"),
        (0, 9, "representative", "constant"),
        (5, None, "best-key", "constant"),
        (5, None, "best-key", "ordered"),
        (0, 9, "representative", "ordered"),
    ],
)
def test_decoding_one_query_equals_the_general_path_when_retrieval_picks_blocks(
    pad, sliding_window, scoring, memory_positions, monkeypatch
):
    """Decoding takes its own path (slices of the cache, one softmax); the tiled general path must
    give the same outputs and scores (a sliding window of 9 clips the first 11 queries' window)."""
    method = longreach.InfLLM(
        n_init=3,
        n_local=8,
        block_size=4,
        topk=2,
        repr_topk=2,
        exec_block=4,
        max_cached_blocks=4,
        block_scoring=scoring,
        memory_positions=memory_positions,
    )
    case = dict(
        batch=2,
        kv_heads=2,
        group=3,
        head_dim=16,
        rotary_fraction=0.5,
        interleaved=False,
        n_key=70,
        n_query=70,
        pad=pad,
        seed=11,
    )
    x, queries, keys, layout = rotated_inputs(case)
    scoring = Scoring(layout, scale=x["scale"], sliding_window=sliding_window)
    runs = []
    for path in ("one query", "general"):
        if path == "general":
            monkeypatch.setattr(memory_attention, "_attend_one_query", general_path_for_one_query)
        # Decoding also before n_init + n_local.
        outputs, state, held = read_in_calls(
            method, scoring, x, queries, keys, [(0, 6), *((t, t + 1) for t in range(6, 70))]
        )
        assert state.store.count > method.topk  # retrieval chose among blocks
        runs.append((torch.cat(outputs, dim=2), state.scores, state.store.representatives, held))
    (fast, fast_scores, fast_reprs, fast_held), (general, scores, reprs, general_held) = runs
    torch.testing.assert_close(fast, general, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_scores, scores, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_reprs, reprs, atol=1e-5, rtol=1e-5)
    assert torch.equal(fast_held, general_held)


ACTIVE = longreach.InfLLM(n_init=2, n_local=8, block_size=4, topk=2, repr_topk=2, exec_block=4, max_cached_blocks=3)


def decode(model, ids, cache, steps):
    """Greedy token-by-token continuation through ``cache``; returns the logits of each step."""
    token, out = ids[:, -1:], []
    for _ in range(steps):
        with torch.no_grad():
            step = model(token, **cache_kwargs(model, cache), use_cache=True).logits[:, -1]
        out.append(step)
        token = step.argmax(-1, keepdim=True)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize(
    ("scoring", "memory_positions"),
    [("representative", "constant"), ("best-key", "constant"), ("representative", "ordered")],
)
def test_chunked_prefill_and_decoding_equal_one_shot_prefill_and_decoding(scoring, memory_positions):
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, replace(ACTIVE, block_scoring=scoring, memory_positions=memory_positions))
    ids = torch.randint(3, 128, (2, 61))
    runs = []
    for chunks in ([(0, 60)], [(0, 8), (8, 12), (12, 36), (36, 60)]):
        cache = DynamicCache(config=model.config)
        prefill = [logits(model, ids[:, a:b], **cache_kwargs(model, cache), use_cache=True) for a, b in chunks]
        assert cache.get_seq_length() == 60
        assert all(layer.keys.shape[2] <= 2 + 4 + 8 for layer in cache.layers)
        runs.append((torch.cat(prefill, dim=1), decode(model, ids[:, :61], cache, 12)))
        assert cache.get_seq_length() == 72
        assert cache.memory_states[(0, (0, 1), 0)].store.count >= 12  # retrieval was active
    torch.testing.assert_close(runs[1][0], runs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[1][1], runs[0][1], atol=1e-5, rtol=1e-5)
    vanilla = tiny_model("llama", max_position_embeddings=TRAINED)
    assert (logits(vanilla, ids[:, :60]) - runs[0][0]).abs().max() > 1e-3


def test_a_sliding_window_model_narrows_only_the_local_part_and_refuses_a_wider_one():
    """Mistral-style sliding window (12 tokens): the cache must not drop InfLLM's first tokens and
    leftovers, decoding equals reading at once, and inputs up to n_init + n_local equal the model."""
    model = tiny_model("mistral", sliding_window=12, max_position_embeddings=TRAINED)
    ids = torch.randint(3, 128, (1, 60))
    own = logits(model, ids[:, :16])
    # A plan method cannot reach past the window: said at once.
    with pytest.warns(UserWarning, match="sliding-window layers attend at most 12 tokens back"):
        longreach.extend(model, longreach.SelfExtend(group_size=4, window=6))
    every_block = longreach.InfLLM(
        n_init=4, n_local=12, block_size=4, topk=16, repr_topk=1, exec_block=4, max_cached_blocks=16
    )  # retrieval then does not depend on the split
    longreach.extend(model, every_block)
    assert (logits(model, ids[:, :16]) - own).abs().max() <= 1e-5
    at_once = logits(model, ids)
    cache = DynamicCache(config=model.config)
    read = logits(model, ids[:, :8], **cache_kwargs(model, cache), use_cache=True)
    steps = [logits(model, ids[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True) for t in range(8, 60)]
    assert all(layer.keys.shape[2] <= 4 + 4 + 12 for layer in cache.layers)  # blocks left the cache
    torch.testing.assert_close(torch.cat([read, *steps], dim=1), at_once, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"sliding window.*use n_local <= 12"):
        longreach.extend(model, longreach.InfLLM(n_init=4, n_local=16, block_size=4, exec_block=4))
    ordered = longreach.InfLLM(
        n_init=2,
        n_local=8,
        block_size=2,
        topk=2,
        repr_topk=1,
        exec_block=2,
        max_cached_blocks=2,
        memory_positions="ordered",
    )
    with pytest.raises(ValueError, match=r"sliding window\), but ordered memory reaches distance 17"):
        longreach.extend(model, ordered)
    assert longreach.current_method(model) == every_block  # the refused method changed nothing
    auto = parse_method("infllm:auto", target_length=1 << 20, trained_length=TRAINED, sliding_window=12)
    assert auto.n_local == 12 and longreach.extend(model, auto)  # NAME:auto fits in the window
    assert parse_method("infllm:auto", target_length=1 << 20, trained_length=4096, sliding_window=2047).n_local == 2047


def test_prefill_then_generate_equals_generate():
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, ACTIVE)
    assert model.generation_config.prefill_chunk_size == ACTIVE.exec_block
    ids = torch.randint(3, 128, (1, 70))
    settings_ = dict(max_new_tokens=12, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        direct = model.generate(ids, **settings_)
        cache = longreach.prefill(model, ids, show_progress=False)
        assert cache.get_seq_length() == 68
        resumed = model.generate(ids, **cache_kwargs(model, cache), **settings_)
    assert torch.equal(direct.sequences, resumed.sequences)
    torch.testing.assert_close(torch.stack(resumed.scores), torch.stack(direct.scores), atol=1e-5, rtol=1e-5)
    longreach.restore(model)
    assert model.generation_config.prefill_chunk_size is None


def test_reading_a_long_input_releases_the_freed_heap_before_each_block(monkeypatch):
    released = []
    monkeypatch.setattr(install, "release_free_heap", lambda: released.append(1) or True)
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, ACTIVE)
    ids = torch.randint(3, 128, (1, 70))
    with torch.no_grad():
        cache = longreach.prefill(model, ids, show_progress=False)
        assert len(released) == 68 // ACTIVE.exec_block  # one per block read
        model(ids[:, 68:69], **cache_kwargs(model, cache), use_cache=True)  # decoding: nothing to release
        assert len(released) == 68 // ACTIVE.exec_block
        longreach.extend(model, longreach.SelfExtend(group_size=2, window=8))  # no block memory
        longreach.prefill(model, ids, show_progress=False)
    assert len(released) == 68 // ACTIVE.exec_block


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_the_heap_is_released_where_the_c_library_can():
    assert release_free_heap()


def test_left_padded_batch_read_at_once_equals_rows_alone():
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, ACTIVE)
    rows = [torch.randint(3, 128, (70,)).tolist(), torch.randint(3, 128, (53,)).tolist()]
    ids, mask = left_pad(rows)
    settings_ = dict(
        max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True, prefill_chunk_size=None
    )
    with torch.no_grad():
        batch = model.generate(ids, attention_mask=mask, **settings_)
        for r, row in enumerate(rows):
            alone = model.generate(torch.tensor([row]), **settings_)
            torch.testing.assert_close(
                torch.stack(batch.scores)[:, r], torch.stack(alone.scores)[:, 0], atol=1e-5, rtol=1e-5
            )


def test_bad_settings_and_unsupported_decoding_are_refused():
    with pytest.raises(ValueError, match="repr_topk"):
        longreach.InfLLM(block_size=4, repr_topk=8)
    with pytest.raises(ValueError, match="max_cached_blocks"):
        longreach.InfLLM(topk=8, max_cached_blocks=4)
    with pytest.raises(ValueError, match="exec_block"):
        longreach.InfLLM(n_local=256, exec_block=512)
    with pytest.raises(ValueError, match="storage must be"):
        longreach.InfLLM(storage="disk")
    with pytest.raises(TypeError, match="n_init must be an int"):
        longreach.InfLLM(n_init=1.5)
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    with pytest.raises(ValueError, match="trained to 32 tokens"):
        longreach.extend(model, longreach.InfLLM(n_init=8, n_local=28, block_size=4, exec_block=8))
    longreach.extend(model, ACTIVE)
    ids = torch.randint(3, 128, (1, 40))
    with pytest.raises(ValueError, match="beam search is not supported with a block memory"), torch.no_grad():
        model.generate(ids, max_new_tokens=4, num_beams=2, do_sample=False)


def test_for_model_scales_with_the_trained_length():
    assert longreach.InfLLM.for_model(8192) == longreach.InfLLM(n_local=4096)
    small = longreach.InfLLM.for_model(64)
    assert (small.n_local, small.n_init, small.exec_block, small.block_size) == (32, 32, 32, 4)
    assert longreach.InfLLM.for_model(8192, n_local=2048).n_local == 2048
    assert longreach.methods.parse_method(
        "infllm:auto", target_length=1 << 18, trained_length=8192
    ) == longreach.InfLLM(n_local=4096, block_scoring="best-key", topk=64, max_cached_blocks=64)


@pytest.mark.parametrize("trained", [64, 256, 2048, 8192])
def test_auto_retrieves_a_trained_length_of_blocks_and_ordered_memory_stays_inside_it(trained):
    constant = longreach.InfLLM.for_target(4 * trained, trained)
    assert constant.topk * constant.block_size == trained
    assert longreach.InfLLM.for_target(4 * trained, trained, topk=2).topk == 2
    ordered = longreach.InfLLM.for_target(4 * trained, trained, memory_positions="ordered")
    if trained <= 256:  # the window and the first tokens fill the trained length: no room for ordered memory
        with pytest.raises(ValueError, match="ordered memory .* retrieve fewer blocks"):
            ordered.check_model(trained)
        return
    ordered.check_model(trained)
    assert ordered.memory_reach + ordered.block_size >= trained  # not one block more would fit


@pytest.mark.parametrize("score_rows", [memory_attention.SCORE_ROWS, 3], ids=["rows-at-once", "rows-in-steps"])
@pytest.mark.parametrize("heads_at_once", [True, False], ids=["heads-at-once", "head-by-head"])
@pytest.mark.parametrize("n_local", [40, 7])
def test_window_keys_accumulate_the_attention_they_receive(n_local, heads_at_once, score_rows, monkeypatch):
    """Scores equal the dense softmax weights of local pairs, summed over queries and the group;
    whether the window's products run for all heads at once (decoding) or head by head (prefill),
    for all of a block's query rows at once or a few rows per step (each step its own edges)."""
    monkeypatch.setattr(memory_attention, "SMALL_SCORES", 1 << 30 if heads_at_once else 0)
    monkeypatch.setattr(memory_attention, "SCORE_ROWS", score_rows)
    method = longreach.InfLLM(
        n_init=3, n_local=n_local, block_size=64, topk=1, repr_topk=1, exec_block=min(5, n_local), max_cached_blocks=1
    )
    case = dict(
        batch=2,
        kv_heads=2,
        group=2,
        head_dim=8,
        rotary_fraction=1.0,
        interleaved=False,
        n_key=40,
        n_query=40,
        pad=0,
        seed=5,
        cuts=[9, 23, 24],
    )
    got, expected_out, state, held = run_calls(case, method)
    torch.testing.assert_close(got.double(), expected_out, atol=3e-5, rtol=1e-4)
    x = attention_inputs(case)
    positions = x["key_positions"]
    identity = torch.eye(40, dtype=torch.float64).expand(2, 2, 40, 40)  # values that return the weights
    weights = formula_for_inputs(method, x, interleaved=False, trained_length=64, value=identity)
    i, j = positions[:, None], positions[None, :]
    local = (i < method.n_init + n_local) | (i - j < n_local)
    expected = (weights * local).view(2, 2, 2, 40, 40).sum(dim=(2, 3))
    assert len(held) == 40  # no block formed: every key is still scored
    torch.testing.assert_close(state.scores.double(), expected, atol=1e-5, rtol=1e-4)


def test_cli_specs_take_text_settings():
    from longreach.methods import MethodSpecError, parse_method

    method = parse_method("infllm:n_local=2k,storage=mmap,storage_dir=/tmp")
    assert (method.n_local, method.storage, method.storage_dir) == (2048, "mmap", "/tmp")
    with pytest.raises(MethodSpecError, match="storage must be one of"):
        parse_method("infllm:storage=disk")
    with pytest.raises(MethodSpecError, match="cannot read value"):
        parse_method("infllm:n_local=lots")


def test_best_key_scoring_finds_the_block_whose_representative_hides_its_needle():
    """A block's representative (the mean of its most-attended keys) can say nothing of the one
    key a query matches; ranking by the best key of each block finds it."""
    torch.manual_seed(0)
    kv_heads, group, dim, size, n_blocks = 2, 2, 8, 4, 70  # more than one storage segment
    store = ram_store(kv_heads, size, dim)
    needle = torch.randn(dim)
    planted = 66
    for block in range(n_blocks):
        keys = 0.3 * torch.randn(1, kv_heads, size, dim)
        representative = keys.mean(dim=2) + 0.5 * needle * (block % 5 == 0)  # decoys look alike
        if block == planted:
            keys[0, :, 1] = 3 * needle  # one key; the representative keeps the others' mean
            representative = keys[:, :, [0, 2, 3]].mean(dim=2)
        store.add(keys, torch.randn_like(keys), representative)
    queries = needle.expand(1, kv_heads * group, 3, dim) + 0.05 * torch.randn(1, kv_heads * group, 3, dim)
    assert select_blocks(queries, store, topk=1)[0, 0].tolist() != [planted]
    chosen = select_blocks(queries, store, topk=1, scoring="best-key", scale=dim**-0.5)
    assert chosen[0].tolist() == [[planted], [planted]]
    best = store.best_key_scores(queries.mean(dim=2).reshape(1, kv_heads, group, dim))
    assert best.shape == (1, kv_heads, group, n_blocks)
    torch.testing.assert_close(best[0, 0, 0, planted], (queries[0, 0].mean(dim=0) @ (3 * needle)))


def test_block_scoring_must_be_known():
    with pytest.raises(ValueError, match="block_scoring must be one of representative, best-key, got 'max'"):
        longreach.InfLLM(block_scoring="max")
    assert parse_method("infllm:block_scoring=best-key").block_scoring == "best-key"


def test_ordered_memory_with_every_block_retrieved_is_the_model_itself():
    """Blocks form and leave the cache, yet with room to retrieve them all, ordered memory puts
    every key back at its true position: prefill, chunked prefill and decoding equal the model."""
    model = tiny_model("llama", max_position_embeddings=128)  # memory_reach 81
    ids = torch.randint(3, 128, (2, 60))
    vanilla = logits(model, ids)
    method = longreach.InfLLM(
        n_init=2, n_local=8, block_size=4, topk=16, exec_block=4, max_cached_blocks=16, memory_positions="ordered"
    )
    longreach.extend(model, method)
    cache = DynamicCache(config=model.config)
    chunked = torch.cat(
        [logits(model, ids[:, a:b], **cache_kwargs(model, cache), use_cache=True) for a, b in [(0, 20), (20, 57)]]
        + [logits(model, ids[:, t : t + 1], **cache_kwargs(model, cache), use_cache=True) for t in range(57, 60)],
        dim=1,
    )
    assert cache.memory_states[(0, (0, 1), 0)].store.count == 12  # blocks left the cache
    torch.testing.assert_close(chunked, vanilla, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(model, ids), vanilla, atol=1e-5, rtol=1e-5)


def test_ordered_memory_reads_the_retrieved_blocks_as_if_the_rest_were_cut_out(monkeypatch):
    """The last query reads the first tokens, the retrieved blocks and what follows them at the
    consecutive positions they would have with the other blocks cut out of the input."""
    method = longreach.InfLLM(
        n_init=3,
        n_local=8,
        block_size=4,
        topk=2,
        repr_topk=2,
        exec_block=4,
        max_cached_blocks=4,
        memory_positions="ordered",
    )
    chosen, select = [1, 4], memory_attention.select_blocks

    def choose(queries, store, *args):  # blocks 1 and 4 once there are more than two
        return select(queries, store, *args) if store.count <= 2 else torch.tensor(chosen).expand(1, 2, 2)

    monkeypatch.setattr(memory_attention, "select_blocks", choose)
    case = dict(
        batch=1,
        kv_heads=2,
        group=2,
        head_dim=16,
        rotary_fraction=1.0,
        interleaved=False,
        n_key=40,
        n_query=40,
        pad=0,
        seed=3,
    )
    x, queries, keys, layout = rotated_inputs(case)
    inv_freq = x["inv_freq"]
    outputs, state, _ = read_in_calls(method, Scoring(layout, scale=x["scale"]), x, queries, keys, [(0, 39), (39, 40)])
    got = outputs[-1]
    assert (state.store.count, state.blocks_end) == (7, 31)  # one leftover (31), the window 32-39
    read = torch.cat([torch.arange(3), *(torch.arange(3 + 4 * b, 7 + 4 * b) for b in chosen), torch.arange(31, 40)])
    at = torch.arange(len(read))  # consecutive: the blocks not chosen are cut out
    q = rope(x["raw_q"][:, :, 39:], at[-1:], inv_freq, False).double()
    k = rope(x["raw_k"][:, :, read], at, inv_freq, False).double().repeat_interleave(2, dim=1)
    v = x["value"][:, :, read].double().repeat_interleave(2, dim=1)
    expected = torch.softmax(q @ k.transpose(2, 3) * x["scale"], dim=-1) @ v
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_ordered_memory_must_reach_only_distances_the_model_was_trained_on():
    with pytest.raises(ValueError, match="memory_positions must be one of constant, ordered, got 'sorted'"):
        longreach.InfLLM(memory_positions="sorted")
    assert parse_method("infllm:memory_positions=ordered").memory_positions == "ordered"
    method = longreach.InfLLM.for_model(8192, memory_positions="ordered")
    assert method.memory_reach == 128 + 17 * 128 + 512 + 4096 - 1
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, replace(ACTIVE, memory_positions="ordered"))  # 2 + (2 + 1) * 4 + 4 + 8 - 1 = 25
    wide = replace(ACTIVE, topk=4, max_cached_blocks=4, memory_positions="ordered")  # 2 + 5 * 4 + 4 + 8 - 1
    with pytest.raises(ValueError, match=r"ordered memory \(memory_reach = 33\) reaches rotary distance 33"):
        longreach.extend(model, wide)
