"""Grouped-query attention for a few query tokens on CPU: the query heads that share a key/value head go in one
SDPA call, as extra query rows.

Qwen2.5 and Llama models share each key/value head among several query heads (7 per head in the 0.5B draft).
On CPU, transformers' SDPA path then either repeats the keys and values for every query head or runs torch's
``enable_gqa`` kernel, both slow for a few query tokens. Folding the group's heads into the query length ([b,
heads, n, d] -> [b, kv_heads, group * n, d], the mask repeated per head) computes the same attention in one
call per key/value head: the int4 draft's step (one token over 256 of context) drops from 22.6 to 18.9 ms, the
target's from 189.6 to 176.8 ms (``benchmarks/draft_cost.py``, ``results/draft_cost_lean.json``).

``packed_gqa_attention`` is registered with transformers as ``specadapt_sdpa`` (with sdpa's mask function);
anything it does not handle (GPU, no grouping, a causal pass without a mask, dropout, position bias, paged
caches) goes to transformers' own SDPA function unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "specadapt_sdpa"


def packed_gqa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: query [b, heads, n, d], key/value [b, kv_heads, L, d], a boolean
    mask [b or 1, 1, n, L] or None; returns [b, n, heads, d]."""
    groups = getattr(module, "num_key_value_groups", 1)
    n = query.shape[2]
    plain = (
        query.device.type != "cpu" or groups == 1 or dropout or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None or kwargs.get("softcap") is not None
        or (attention_mask is None and n > 1)  # causal without a mask: a prefill, sdpa's causal kernel suits it
        or (attention_mask is not None and attention_mask.dtype != torch.bool)
    )
    if plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return grouped_sdpa(query, key, value, attention_mask, scaling).transpose(1, 2).contiguous(), None


def grouped_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                 scale: float | None) -> torch.Tensor:
    """SDPA with each group's query heads as extra query rows: query [b, heads, n, d], key/value [b, kv_heads, L, d],
    ``mask`` boolean [b or 1, 1, n, L] (True: attend) or None; returns [b, heads, n, d]."""
    b, heads, n, d = query.shape
    groups = heads // key.shape[1]
    packed = query.reshape(b, key.shape[1], groups * n, d)  # the heads of a group are adjacent
    if mask is not None and n > 1:  # row h * n + i of a group is head h's query i
        mask = mask[:, :, None].expand(-1, -1, groups, -1, -1).reshape(mask.shape[0], 1, groups * n, mask.shape[-1])
    out = F.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scale)
    return out.reshape(b, heads, n, value.shape[-1])


AttentionInterface.register(NAME, packed_gqa_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


def use_packed_attention(model: PreTrainedModel) -> None:
    """Switch a model that runs transformers' SDPA attention to ``specadapt_sdpa`` (others are left alone)."""
    if getattr(model.config, "_attn_implementation", None) == "sdpa":
        model.set_attn_implementation(NAME)
