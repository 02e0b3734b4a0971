"""Attention heads as structures: the same function as nn.MultiheadAttention, noise per head folded
into the value projection, and a removed head computing exactly the masked one."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bmrs.criteria import LayerView, build_criterion
from bmrs.nn.attention import HeadAttention, remove_heads_, structure_weights, use_head_attention_
from bmrs.nn.fold import fold_noise
from bmrs.nn.insert import NoisePoint, insert_noise
from bmrs.nn.noise import noise_modules


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(12, 3, batch_first=True)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.attention(x, x, x, need_weights=False)[0].mean(1))


def test_head_attention_is_multihead_attention_and_loads_its_state_dict():
    torch.manual_seed(0)
    reference = nn.MultiheadAttention(12, 3, batch_first=True).eval()
    x = torch.randn(2, 5, 12)
    expected = reference(x, x, x, need_weights=False)[0]
    converted = HeadAttention.from_multihead(reference).eval()
    loaded = HeadAttention(12, 3)
    loaded.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert torch.allclose(converted(x, x, x)[0], expected, atol=1e-6)
        assert torch.allclose(loaded.eval()(x, x, x)[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="self-attention only"):
        converted(x, x.clone(), x)


def noisy_block(seed=0):
    torch.manual_seed(seed)
    model = use_head_attention_(Block())
    insert_noise(model, [NoisePoint("attention.heads", "attention", 3, dim=1)])
    with torch.no_grad():
        noise = noise_modules(model)["attention.heads.noise"]
        noise.mu.copy_(torch.tensor([-0.2, -1.0, -0.5]))
        noise.log_sigma.fill_(-2.0)
    return model.eval(), noise


def test_head_noise_folds_into_the_value_rows_and_a_removed_head_is_the_masked_one():
    from export.slicing import slice_model

    model, noise = noisy_block()
    x = torch.randn(4, 5, 12)
    with torch.no_grad():
        plain, keep = fold_noise(model)
        assert torch.allclose(plain(x), model(x), atol=1e-6)  # E[theta] per head in v's rows
        noise.prune_(torch.tensor([False, True, False]))
        result = slice_model(model, x)
        assert result.model.attention.num_heads == 2 and result.model.attention.q.out_features == 8
        assert torch.allclose(result.model(x), model(x), atol=1e-6)
    assert list(result.keep) == ["attention"] and result.keep["attention"].tolist() == [True, False, True]


def test_remove_heads_refuses_bad_masks():
    attention = HeadAttention(8, 2)
    with pytest.raises(ValueError, match="at least one"):
        remove_heads_(attention, torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool mask over the 2 heads"):
        remove_heads_(attention, torch.ones(3, dtype=torch.bool))


def test_weight_criteria_score_a_head_by_its_query_key_and_value_rows():
    model, noise = noisy_block()
    attention = model.attention
    with torch.no_grad():
        attention.v.weight[4:8].zero_()  # head 1's value rows
        attention.q.weight[4:8].zero_()
        attention.k.weight[4:8].zero_()
    norms = structure_weights(attention).norm(dim=1)
    assert norms.shape == (3,) and float(norms[1]) == 0.0
    decision = build_criterion("l2", ratio=0.34).decide(LayerView("attention.heads.noise", noise, attention))
    assert decision.prune.tolist() == [False, True, False]
    model.train()
    model(torch.randn(2, 5, 12)).sum().backward()
    assert structure_weights(attention, grad=True).shape == (3, 3 * 4 * 12)
