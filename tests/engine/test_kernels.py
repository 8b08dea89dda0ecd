import torch

from longreach.engine.kernels import attention_with_lse, merge_by_lse, portable_attention_with_lse


def dense(q, k, v, scale, allowed):
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v, torch.logsumexp(scores, -1)


def test_kernels_return_exact_lse_with_mask_and_causal():
    q, k, v = torch.randn(2, 3, 7, 16), torch.randn(2, 3, 11, 16), torch.randn(2, 3, 11, 16)
    mask = torch.rand(7, 11) > 0.3
    mask[:, 0] = True
    causal = torch.ones(7, 11, dtype=torch.bool).tril()
    for kernel in (attention_with_lse, portable_attention_with_lse):
        out, lse = kernel(q, k, v, scale=0.25, mask=mask)
        ref_out, ref_lse = dense(q, k, v, 0.25, mask)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)
        out, lse = kernel(q, k, v, scale=0.25, causal=True)
        ref_out, ref_lse = dense(q, k, v, 0.25, causal)
        torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_merge_by_lse_is_exact_and_keeps_empty_rows_zero():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    whole, whole_lse = dense(q, k, v, 0.3, torch.ones(4, 10, dtype=torch.bool))
    a, a_lse = dense(q, k[..., :6, :], v[..., :6, :], 0.3, torch.ones(4, 6, dtype=torch.bool))
    b, b_lse = dense(q, k[..., 6:, :], v[..., 6:, :], 0.3, torch.ones(4, 4, dtype=torch.bool))
    out, lse = merge_by_lse(a, a_lse, b, b_lse)
    torch.testing.assert_close(out, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(lse, whole_lse)
    empty = torch.full((1, 2, 4), float("-inf"))
    out, lse = merge_by_lse(torch.zeros(1, 2, 4, 8), empty, torch.zeros(1, 2, 4, 8), empty)
    assert torch.equal(out, torch.zeros(1, 2, 4, 8)) and torch.isneginf(lse).all()
