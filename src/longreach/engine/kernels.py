"""Attention kernels that also return the log-sum-exp of each query row's scores: PyTorch's fused
flash kernel on CPU, its flash or memory-efficient kernel on CUDA, and a portable one in plain
torch ops for everything else (other devices, soft-capping).

The LSE is what lets the engine merge the parts of a plan exactly. Shapes follow SDPA:
q (B, H, Nq, D), k and v (B, H, Nk, D), returning out (B, H, Nq, D) in q's dtype and
lse (B, H, Nq) in float32. ``mask`` is boolean (Nq, Nk), True where a pair attends; rows with
no allowed key must be flagged by the caller (the CPU kernel reports lse 0 for them).
``softcap`` (Gemma 2) bounds each scaled score s to ``softcap * tanh(s / softcap)``.
"""

from __future__ import annotations

import torch

# Keys per step of the portable kernel: bounds its score matrix to Nq x KEY_CHUNK.
KEY_CHUNK = 4096


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention returning (out, lse); ``causal`` is top-left aligned.

    Example:
        >>> q = k = v = torch.randn(1, 2, 4, 8)
        >>> out, lse = attention_with_lse(q, k, v, scale=8 ** -0.5, causal=True)
        >>> out.shape, lse.shape
        (torch.Size([1, 2, 4, 8]), torch.Size([1, 2, 4]))
    """
    if softcap is None:  # the fused kernels have no soft-capping
        if q.device.type == "cpu":
            return _cpu_flash(q, k, v, scale=scale, mask=mask, causal=causal)
        if q.device.type == "cuda":
            fused = _cuda_fused(q, k, v, scale=scale, mask=mask, causal=causal)
            if fused is not None:
                return fused
    return portable_attention_with_lse(q, k, v, scale=scale, mask=mask, causal=causal, softcap=softcap)


def _cpu_flash(q, k, v, *, scale, mask, causal):
    additive = None
    if mask is not None:
        additive = torch.zeros(mask.shape, dtype=q.dtype, device=q.device)
        additive.masked_fill_(~mask, float("-inf"))
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, causal, attn_mask=additive, scale=scale
    )
    return out, lse


def _cuda_fused(q, k, v, *, scale, mask, causal):
    """PyTorch's flash kernel (half precision, no mask) or memory-efficient kernel (a mask as an
    additive bias), both asked for their log-sum-exp; None when neither takes these inputs.
    The engine's causal pieces are square, so top-left and bottom-right alignment agree."""
    params = torch.backends.cuda.SDPAParams(q, k, v, None, 0.0, causal, False)
    if mask is None and torch.backends.cuda.can_use_flash_attention(params):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, scale=scale)[:2]
        return out, lse.float()
    bias = None
    if mask is not None:
        # The kernel reads the bias in rows aligned to 16 elements: pad the row, then slice.
        padded = -(-mask.shape[-1] // 16) * 16
        bias = torch.zeros(*mask.shape[:-1], padded, dtype=q.dtype, device=q.device)[..., : mask.shape[-1]]
        bias.masked_fill_(~mask, float("-inf"))
        bias = bias.expand(q.shape[0], q.shape[1], *mask.shape[-2:])
    params = torch.backends.cuda.SDPAParams(q, k, v, bias, 0.0, causal, False)
    if not torch.backends.cuda.can_use_efficient_attention(params):
        return None
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True, 0.0, causal, scale=scale)[:2]
    return out, lse[..., : q.shape[-2]].float()  # the kernel pads the rows of its lse


def portable_attention_with_lse(q, k, v, *, scale, mask=None, causal=False, softcap=None):
    """Reference-grade kernel in plain torch ops, for devices without a fused LSE kernel.

    Walks keys in chunks of ``KEY_CHUNK`` with an online softmax, so memory stays
    O(Nq * KEY_CHUNK) per head whatever the key count.
    """
    nq, nk = q.shape[-2], k.shape[-2]
    allowed = mask
    if causal:
        tril = torch.ones(nq, nk, dtype=torch.bool, device=q.device).tril()
        allowed = tril if allowed is None else allowed & tril
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    qf = q.to(torch.float32) * scale
    for start in range(0, nk, KEY_CHUNK):
        stop = min(nk, start + KEY_CHUNK)
        scores = cap_scores(qf @ k[..., start:stop, :].to(torch.float32).transpose(-1, -2), softcap)
        if allowed is not None:
            scores = scores.masked_fill(~allowed[..., start:stop], float("-inf"))
        chunk_lse = torch.logsumexp(scores, dim=-1)
        weights = torch.exp(scores - chunk_lse.unsqueeze(-1).clamp_min(-1e30)).nan_to_num_(0.0)
        chunk_out = weights @ v[..., start:stop, :].to(torch.float32)
        out, lse = merge_by_lse(out, lse, chunk_out, chunk_lse)
    return out.to(q.dtype), lse


def cap_scores(scores: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Gemma 2's attention logit soft-capping, ``softcap * tanh(scores / softcap)``; scores
    unchanged when ``softcap`` is None."""
    if softcap is None:
        return scores
    return torch.tanh(scores / softcap).mul_(softcap)


def merge_by_lse(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exactly combine two softmax-attention results over disjoint key sets (float32).

    A row whose lse is -inf on both sides (no key at all) stays zero with lse -inf.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    safe = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    weight_a = torch.exp(lse_a - safe).unsqueeze(-1)
    weight_b = torch.exp(lse_b - safe).unsqueeze(-1)
    return out_a * weight_a + out_b.to(torch.float32) * weight_b, lse
