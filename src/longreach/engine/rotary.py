"""Rotary layouts and re-rotation of already-rotated queries and keys.

A method moves a query or key from its true RoPE position p to another position p'. Because
rotations compose, R(p') x = R(p' - p) R(p) x: the engine never needs the unrotated vectors, only
the delta angle. Only the model's ``inv_freq`` is used; YaRN/LongRoPE attention scaling is a
magnitude already inside q and k and a pure rotation leaves it untouched.
"""

from __future__ import annotations

import math
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

    def angles(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin) float32 (N, rotary_dims / 2) of a rotation by ``delta`` positions (N,).

        Angles are formed and reduced modulo 2 pi in float64: positions up to millions times
        inv_freq up to 1 lose precision in float32.
        """
        angles = delta.to(torch.float64)[:, None] * self.inv_freq.to(delta.device, torch.float64)[None, :]
        angles = angles.remainder_(2 * math.pi).to(torch.float32)
        return angles.cos(), angles.sin()

    def rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotate ``x`` (..., N, head_dim) forward by ``delta`` positions (N,), float or int."""
        return self.apply(x, self.angles(delta))

    def apply(self, x: torch.Tensor, angles: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Rotate ``x`` (..., N, head_dim) by :meth:`angles` of some delta (computed once, they
        serve every layer of a forward).

        The rotation runs in float32, in place on one output buffer (several times faster on CPU
        than building it from temporaries).
        """
        cos, sin = angles
        rot = self.rotary_dims
        source = x.to(torch.float32)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        if self.interleaved:
            first, second = slice(0, rot, 2), slice(1, rot, 2)
        else:
            first, second = slice(0, rot // 2), slice(rot // 2, rot)
        x1, x2 = source[..., first], source[..., second]
        out1, out2 = out[..., first], out[..., second]
        torch.mul(x1, cos, out=out1)
        out1.addcmul_(x2, sin, value=-1.0)
        torch.mul(x2, cos, out=out2)
        out2.addcmul_(x1, sin)
        if rot < x.shape[-1]:
            out[..., rot:] = source[..., rot:]
        return out.to(x.dtype)
