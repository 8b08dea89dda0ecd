"""Rotary layouts and re-rotation of already-rotated queries and keys.

A method moves a query or key from its true RoPE position p to another position p'. Because
rotations compose, R(p') x = R(p' - p) R(p) x: the engine never needs the unrotated vectors, only
the delta angle. Only the model's ``inv_freq`` is used; YaRN/LongRoPE attention scaling is a
magnitude already inside q and k and a pure rotation leaves it untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class RotaryLayout:
    """How a model applies RoPE to each head: which dims rotate, paired how, at which speeds.

    ``inv_freq`` has one entry per rotated pair, so ``rotary_dims = 2 * len(inv_freq)`` leading
    dims of each head rotate and the rest pass through (partial rotary, e.g. Phi, StableLM).
    ``interleaved`` pairs dims (0, 1), (2, 3), ... (GPT-J, Cohere, GLM); otherwise a dim pairs
    with the one half the rotary span away (Llama's ``rotate_half``).

    Example:
        >>> layout = RotaryLayout(inv_freq=torch.tensor([1.0, 0.01]), interleaved=False)
        >>> layout.rotary_dims
        4
    """

    inv_freq: torch.Tensor
    interleaved: bool = False

    @property
    def rotary_dims(self) -> int:
        return 2 * self.inv_freq.numel()

    def rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (..., N, head_dim) forward by ``delta`` positions (N,), float or int.

        Angles are formed in float64 (positions up to millions times inv_freq up to 1 lose
        precision in float32) and the rotation is applied in float32.
        """
        angles = delta.to(torch.float64)[:, None] * self.inv_freq.to(delta.device, torch.float64)[None, :]
        cos = angles.cos().to(torch.float32)
        sin = angles.sin().to(torch.float32)
        rot = self.rotary_dims
        x32 = x[..., :rot].to(torch.float32)
        if self.interleaved:
            x1, x2 = x32[..., 0::2], x32[..., 1::2]
            rotated = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        else:
            x1, x2 = x32[..., : rot // 2], x32[..., rot // 2 :]
            rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        rotated = rotated.to(x.dtype)
        if rot == x.shape[-1]:
            return rotated
        return torch.cat((rotated, x[..., rot:]), dim=-1)
