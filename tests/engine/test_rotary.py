import sys

import pytest
import torch
from conftest import FAMILIES, tiny_model
from dense_reference import rope

from longreach.engine.rotary import RotaryLayout
from longreach.models.rotary import describe_rotary


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("rotary_dims", [8, 16])
def test_rotate_composes_with_rope(interleaved, rotary_dims):
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dims, 2) / rotary_dims))
    layout = RotaryLayout(inv_freq=inv_freq, interleaved=interleaved)
    raw = torch.randn(2, 3, 5, 16)
    start = torch.tensor([0, 3, 17, 1000, 5])
    target = torch.tensor([4.0, 3.0, 2.5, 90000.0, 0.0])
    moved = layout.rotate(rope(raw, start, inv_freq, interleaved).float(), target - start)
    torch.testing.assert_close(moved, rope(raw, target, inv_freq, interleaved).float(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_detected_layout_matches_the_models_own_rope(family):
    """Re-rotating by the detected layout equals the model's apply_rotary_pos_emb at the new position."""
    model = tiny_model(family)
    rotary, layouts, _ = describe_rotary(model)
    attention = next(m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "config"))
    apply = sys.modules[type(attention).__module__].apply_rotary_pos_emb
    for layer_type, layout in layouts.items():  # gemma3: one RoPE per layer type, with its own base
        raw = torch.randn(1, 2, 3, layout.rotary_dims)

        def model_rope(positions, raw=raw, by_type=[layer_type] if layer_type else []):
            cos, sin = rotary(raw, positions[None], *by_type)
            rotated, _ = apply(raw, raw, cos, sin)
            return rotated

        start, target = torch.tensor([1, 40, 63]), torch.tensor([33, 2, 63])
        moved = layout.rotate(model_rope(start), (target - start).float())
        torch.testing.assert_close(moved, model_rope(target), atol=1e-5, rtol=1e-5)
    assert len(layouts) == (2 if family == "gemma3" else 1)
