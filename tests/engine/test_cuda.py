"""The CUDA path: the fused kernels against the portable one, and the engine and an extended model
on the GPU against the CPU. Skipped without CUDA; ``benchmarks/device_check.sh`` runs them."""

import pytest
import torch
from conftest import tiny_model
from dense_reference import rope

from longreach.engine.attention import Scoring, attend
from longreach.engine.kernels import _cuda_fused, attention_with_lse, portable_attention_with_lse
from longreach.engine.rotary import RotaryLayout
from longreach.methods import DualChunk, ReRoPE, SelfExtend

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["full", "causal", "masked"])
def test_fused_kernels_return_the_portable_kernels_lse(dtype, kind):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 64, generator=generator) for n in (37, 37, 37))
    mask = None
    if kind == "masked":
        mask = torch.rand(37, 37, generator=generator) > 0.4
        mask[:, 0] = True
    causal = kind == "causal"
    expected_out, expected_lse = portable_attention_with_lse(q, k, v, scale=0.125, mask=mask, causal=causal)
    cuda = [t.cuda().to(dtype) for t in (q, k, v)]
    cuda_mask = mask.cuda() if mask is not None else None
    assert _cuda_fused(*cuda, scale=0.125, mask=cuda_mask, causal=causal) is not None  # not the fallback
    out, lse = attention_with_lse(*cuda, scale=0.125, mask=cuda_mask, causal=causal)
    assert lse.dtype == torch.float32 and lse.shape == expected_lse.shape
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float().cpu(), expected_out, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(lse.cpu(), expected_lse, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(
    "method", [SelfExtend(group_size=3, window=40), DualChunk(chunk_size=64, local_window=16), ReRoPE(window=32)]
)
def test_the_engine_on_cuda_equals_the_engine_on_cpu(method):
    generator = torch.Generator().manual_seed(1)
    n = 300
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2).float() / 64))
    positions = torch.arange(n)
    q = rope(torch.randn(1, 8, n, 64, generator=generator), positions, inv_freq, False).float()
    k = rope(torch.randn(1, 2, n, 64, generator=generator), positions, inv_freq, False).float()
    v = torch.randn(1, 2, n, 64, generator=generator)
    scoring = Scoring(RotaryLayout(inv_freq=inv_freq), scale=0.125)
    on_cpu = attend(q, k, v, method.parts(), scoring, query_positions=positions, key_positions=positions, tile=64)
    gpu_scoring = Scoring(RotaryLayout(inv_freq=inv_freq.cuda()), scale=0.125)
    on_gpu = attend(
        q.cuda(),
        k.cuda(),
        v.cuda(),
        method.parts(),
        gpu_scoring,
        query_positions=positions.cuda(),
        key_positions=positions.cuda(),
        tile=64,
    )
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=1e-4)


def test_an_extended_model_on_cuda_matches_the_cpu():
    import longreach

    model = tiny_model()
    trained = model.config.max_position_embeddings
    longreach.extend(model, "self-extend:auto", target_length=4 * trained)
    ids = torch.randint(0, model.config.vocab_size, (2, 3 * trained), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        on_cpu = model(ids).logits
        on_gpu = model.cuda()(ids.cuda()).logits.cpu()
    torch.testing.assert_close(on_gpu, on_cpu, atol=2e-4, rtol=2e-4)
