"""Pooling picks the same positions whatever side the padding is on."""

from __future__ import annotations

import torch

from moai_export.core.pooling import ContractPooler, pool

HIDDEN = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)


def test_last_token_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(HIDDEN, left, "lasttoken"), torch.stack([HIDDEN[0, 3], HIDDEN[1, 3]]))
    assert torch.equal(pool(HIDDEN, right, "lasttoken"), torch.stack([HIDDEN[0, 1], HIDDEN[1, 3]]))


def test_cls_left_and_right_padding():
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert torch.equal(pool(HIDDEN, left, "cls"), torch.stack([HIDDEN[0, 2], HIDDEN[1, 0]]))
    assert torch.equal(pool(HIDDEN, right, "cls"), torch.stack([HIDDEN[0, 0], HIDDEN[1, 0]]))


def test_mean_ignores_pads_even_if_nan():
    hidden = HIDDEN.clone()
    hidden[0, 0] = float("nan")  # a fully masked pad row
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    out = pool(hidden, mask, "mean")
    assert torch.allclose(out[0], HIDDEN[0, 1:].mean(0)) and torch.allclose(out[1], HIDDEN[1].mean(0))


def test_pooler_normalizes_in_float32():
    mask = torch.ones(2, 4, dtype=torch.int64)
    out = ContractPooler("lasttoken", normalize=True)(HIDDEN.half(), mask)
    assert out.dtype == torch.float32
    assert torch.allclose(out.norm(dim=-1), torch.ones(2))
