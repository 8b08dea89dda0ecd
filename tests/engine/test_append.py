"""append_tokens and drop_run: torch.cat and dropping in value, without copying what is held."""

import pytest
import torch

from longreach.engine.append import append_tokens, can_drop_in_place, drop_run


def test_appending_equals_cat_and_writes_in_place_while_there_is_room():
    held = torch.randn(2, 3, 16, 4)
    expected = held
    pointers = []
    for step in range(12):
        new = torch.randn(2, 3, 1 + step % 2, 4)
        held = append_tokens(held, new)
        expected = torch.cat((expected, new), dim=-2)
        assert torch.equal(held, expected)
        pointers.append(held.data_ptr())
    # One copy into a buffer with room, then appends in place until the room runs out.
    assert len(set(pointers)) < len(pointers) // 2
    assert held._base.shape[-2] <= 2 * held.shape[-2]


def test_a_cropped_prefix_is_overwritten_and_a_foreign_tensor_is_copied():
    held = append_tokens(torch.randn(1, 2, 8, 4), torch.randn(1, 2, 1, 4))
    cropped = held[..., :5, :]  # what DynamicLayer.crop leaves
    new = torch.randn(1, 2, 2, 4)
    grown = append_tokens(cropped, new)
    assert grown.data_ptr() == held.data_ptr()
    assert torch.equal(grown, torch.cat((cropped, new), dim=-2))
    selected = grown[[0]]  # batch selection makes a new tensor: never written after
    before = selected.clone()
    again = append_tokens(selected, new)
    assert again.data_ptr() != selected.data_ptr() and torch.equal(selected, before)
    assert torch.equal(again, torch.cat((before, new), dim=-2))


def test_tensors_that_need_gradients_are_concatenated():
    held = append_tokens(torch.randn(1, 1, 4, 2), torch.randn(1, 1, 1, 2)).requires_grad_()
    out = append_tokens(held, torch.randn(1, 1, 1, 2))
    out.sum().backward()
    assert torch.equal(held.grad, torch.ones_like(held))


def test_a_view_of_someone_elses_tensor_is_never_written_after():
    theirs = torch.randn(1, 2, 10, 4)
    before = theirs.clone()
    grown = append_tokens(theirs[..., :6, :], torch.randn(1, 2, 1, 4))
    assert torch.equal(theirs, before) and grown.data_ptr() != theirs.data_ptr()


def test_dropping_a_run_moves_the_tokens_before_it_in_place():
    held = append_tokens(torch.randn(1, 2, 30, 4), torch.randn(1, 2, 1, 4))
    expected = torch.cat((held[..., :3, :], held[..., 5:, :]), dim=-2)
    assert can_drop_in_place(held, 3, 5)
    dropped = drop_run(held, 3, 5)
    assert torch.equal(dropped, expected) and dropped._base is held._base
    # Moving 20 tokens to keep 10 is dearer than copying them; a foreign tensor is never touched.
    assert not can_drop_in_place(dropped, 20, 22)
    assert not can_drop_in_place(torch.randn(1, 2, 30, 4), 3, 5)
    with pytest.raises(ValueError, match="cannot be dropped in place"):
        drop_run(dropped, 20, 22)


def test_a_view_that_would_pin_a_mostly_empty_buffer_is_not_kept():
    held = append_tokens(torch.randn(1, 1, 64, 2), torch.randn(1, 1, 1, 2))
    assert not can_drop_in_place(held, 2, 50)  # 17 tokens left of a 73-token buffer: copy them


def test_appends_in_place_under_inference_mode():
    """vLLM runs under torch.inference_mode, where views do not record their base."""
    with torch.inference_mode():
        start = torch.arange(16.0).view(1, 1, 16, 1)
        held = append_tokens(start, torch.tensor(16.0).view(1, 1, 1, 1))
        grown = append_tokens(held, torch.tensor(17.0).view(1, 1, 1, 1))
        assert grown.data_ptr() == held.data_ptr()
        assert grown.flatten().tolist() == list(range(18))
        assert can_drop_in_place(grown, 1, 2)
        dropped = drop_run(grown, 1, 2)
        again = append_tokens(dropped, torch.tensor(18.0).view(1, 1, 1, 1))
        assert again.data_ptr() == dropped.data_ptr()
        assert again.flatten().tolist() == [0.0] + list(range(2, 19))
