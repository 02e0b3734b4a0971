"""Multi-head self-attention whose heads are structures: noise per head, folded and sliced per head.

``nn.MultiheadAttention`` packs every head's query, key and value projections into one tensor and
applies its output projection without calling it as a module, so neither noise nor slicing can
reach a head. ``HeadAttention`` computes the same function with its projections as four Linear
modules (``q``, ``k``, ``v``, ``out``) and passes the per-head outputs, shaped ``(batch, heads,
tokens, head_dim)``, through ``heads`` (an identity): noise on ``heads`` along dim 1 scales head
``h`` by ``theta_h``. Because the attention weights do not depend on the values, scaling head ``h``'s
rows of ``v`` by ``E[theta_h]`` is the same function (``head_rows`` and ``bmrs.nn.fold``), and a
removed head is its rows of ``q``, ``k`` and ``v`` and its columns of ``out`` (``remove_heads_``).

It loads ``nn.MultiheadAttention`` state dicts (``in_proj_weight``, ``out_proj.weight``, ...), so
torchvision's pretrained ViT weights fit the ViT families that use it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class HeadGate(nn.Identity):
    """Where a head's noise goes: the per-head outputs, ``(batch, heads, tokens, head_dim)``."""


class HeadAttention(nn.Module):
    """Self-attention over ``(batch, tokens, embed_dim)`` with ``num_heads`` heads of ``head_dim``,
    called as torchvision's encoder calls ``nn.MultiheadAttention(batch_first=True)``:
    ``attention(x, x, x, need_weights=False) -> (output, None)``."""

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        self.head_dim = embed_dim // num_heads
        self.q = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.heads = HeadGate()
        self.out = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.dropout = dropout

    @property
    def num_heads(self) -> int:
        """The heads this module has now (fewer once some are removed)."""
        return self.v.out_features // self.head_dim

    @classmethod
    def from_multihead(cls, attention: nn.MultiheadAttention) -> "HeadAttention":
        """The same function as ``attention`` (self-attention, ``batch_first=True``), its weights copied."""
        if not attention.batch_first or not attention._qkv_same_embed_dim:
            raise ValueError("HeadAttention replaces batch-first self-attention whose query, key and value share one size")
        module = cls(attention.embed_dim, attention.num_heads, dropout=attention.dropout, bias=attention.in_proj_bias is not None)
        module.load_state_dict(attention.state_dict())
        return module

    def forward(self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool = False, **unsupported: object):
        if key is not query or value is not query or need_weights or any(v is not None for v in unsupported.values()):
            raise ValueError("HeadAttention computes self-attention only: call it as attention(x, x, x, need_weights=False)")
        batch, tokens, _ = query.shape
        # -1 heads: the count follows the tensors, so a model with heads removed needs no attribute update.
        def split(x: Tensor) -> Tensor:
            return x.reshape(batch, tokens, -1, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(query)), split(self.k(query)), split(self.v(query))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        weights = F.dropout(weights, self.dropout, self.training)
        heads = self.heads(weights @ v)
        return self.out(heads.transpose(1, 2).reshape(batch, tokens, -1)), None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        split_packed_projection_(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)


def split_packed_projection_(state: dict[str, Tensor], prefix: str) -> None:
    """In place: the ``nn.MultiheadAttention`` keys under ``prefix`` (``in_proj_weight``, ``out_proj.*``)
    as ``HeadAttention``'s (``q``/``k``/``v``/``out``); other keys are left alone."""
    if prefix + "in_proj_weight" not in state:
        return
    for kind in ("weight", "bias"):
        packed = state.pop(prefix + f"in_proj_{kind}", None)
        if packed is not None:
            for name, part in zip("qkv", packed.chunk(3, dim=0)):
                state[prefix + f"{name}.{kind}"] = part
        out = state.pop(prefix + f"out_proj.{kind}", None)
        if out is not None:
            state[prefix + f"out.{kind}"] = out


def with_head_attention_keys(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with every ``nn.MultiheadAttention`` entry of ``model``'s ``HeadAttention`` modules
    renamed, so that a torchvision state dict compares key by key with ``model``'s."""
    converted = dict(state)
    for path, module in model.named_modules():
        if isinstance(module, HeadAttention):
            split_packed_projection_(converted, f"{path}." if path else "")
    return converted


def head_rows(attention: HeadAttention, factor: Tensor) -> Tensor:
    """A per-head ``factor`` as one value per row of ``v`` (each head owns ``head_dim`` rows)."""
    return factor.repeat_interleave(attention.head_dim)


def structure_weights(source: nn.Module, *, grad: bool = False) -> Tensor:
    """The incoming weights of each output structure of ``source``, ``(structures, -1)``: a Linear's
    rows, a Conv2d's filters, a ``HeadAttention``'s heads (each head's rows of ``q``, ``k`` and ``v``).
    What the weight- and gradient-norm criteria score a structure by; ``grad``: their gradients."""
    layers = (source.q, source.k, source.v) if isinstance(source, HeadAttention) else (source,)
    parts = []
    for layer in layers:
        tensor = layer.weight.grad if grad else layer.weight
        if tensor is None:
            raise ValueError(f"the weights of {type(source).__name__} have no gradient yet; run a backward pass first")
        rows = source.num_heads if isinstance(source, HeadAttention) else tensor.shape[0]
        parts.append(tensor.detach().reshape(rows, -1))
    return torch.cat(parts, dim=1)


@torch.no_grad()
def remove_heads_(attention: HeadAttention, keep: Tensor) -> None:
    """Remove the heads where ``keep`` is False: their rows of ``q``, ``k``, ``v`` and columns of ``out``."""
    if keep.dtype != torch.bool or tuple(keep.shape) != (attention.num_heads,):
        raise ValueError(f"keep must be a bool mask over the {attention.num_heads} heads, got {keep.dtype} {tuple(keep.shape)}")
    if not bool(keep.any()):
        raise ValueError("keep removes every head; keep at least one")
    rows = keep.repeat_interleave(attention.head_dim).nonzero().flatten()
    for name in ("q", "k", "v"):
        old = getattr(attention, name)
        new = nn.Linear(old.in_features, rows.numel(), bias=old.bias is not None).to(old.weight)
        new.weight.copy_(old.weight[rows])
        if old.bias is not None:
            new.bias.copy_(old.bias[rows])
        setattr(attention, name, new)
    old = attention.out
    new = nn.Linear(rows.numel(), old.out_features, bias=old.bias is not None).to(old.weight)
    new.weight.copy_(old.weight[:, rows])
    if old.bias is not None:
        new.bias.copy_(old.bias)
    attention.out = new


def use_head_attention_(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` of ``model`` by the equivalent ``HeadAttention`` (in place)."""
    from bmrs.nn.insert import set_submodule

    for path, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            set_submodule(model, path, HeadAttention.from_multihead(module))
    return model
