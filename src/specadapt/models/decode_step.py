"""A lean forward for a few new tokens of a Llama-family decoder: the draft's step, without transformers' per-call
machinery.

Through the transformers forward (with packed attention), a step of the int4 0.5B draft on CPU is 18.9 ms:
12.2 ms in the linear layers and the head, 6.6 ms of everything else (mask construction, keyword plumbing
through every layer, output capturing, attention dispatch, norms as many small ops). This forward calls the same
modules (projections, embedding, rotary, output head) in the same order, so its logits are the same up to float
rounding, but builds the mask once per step, computes each RMSNorm as one fused op and runs grouped-query
attention packed (:mod:`specadapt.models.attention`): 17.8 ms, 5.3 ms of it outside the linear layers
(``benchmarks/draft_cost.py``, ``results/draft_cost_lean.json``). It also calls one int4 layer for q/k/v and one
for gate/up where quantization fused them (:func:`~specadapt.models.quant.fused_layer`) and rotates queries and
keys in one pass: 0.85 of the transformers forward's step in the same rounds, against 0.94 without
(``results/draft_cost_fused.json``).

Only for architectures whose layer is exactly what this code does (Llama, Qwen2 without sliding windows); for
anything else :meth:`DecodeStep.for_model` returns None and the runner keeps the transformers forward.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F
from transformers import DynamicCache, PreTrainedModel

from .attention import grouped_sdpa
from .quant import Int4Linear, fused_layer


class KVStore(Protocol):
    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store a block's keys and values [b, kv_heads, n, d] for ``layer``; return all of that layer's."""

SUPPORTED = ("llama", "qwen2")
MAX_TOKENS = 16  # blocks up to this long (draft steps, short verifications); prompts take the transformers path


def _rms_norm(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    # As transformers' Llama/Qwen2 RMSNorm: normalise in fp32, back to the input's dtype, then scale.
    return norm.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # transformers' apply_rotary_pos_emb, op for op, on [b, n, heads, d] with cos/sin [b, n, 1, d].
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat((-x2, x1), -1) * sin


class DecodeStep:
    """``step(tokens, mask, positions, cache, keep)``: the causal LM's logits for the last ``keep`` of ``tokens``
    [b, n] (fp32) and the final hidden states there, appending the block's keys and values to ``cache``."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        # Where quantize_model fused them: one int4 layer for q/k/v and one for gate/up (None: call the parts).
        self.fused = [(fused_layer(layer.self_attn), fused_layer(layer.mlp)) for layer in model.model.layers]

    @classmethod
    def for_model(cls, model: PreTrainedModel) -> "DecodeStep | None":
        config = model.config
        if getattr(config, "model_type", None) not in SUPPORTED:
            return None
        if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
            return None  # sliding-window layers need their own mask
        if getattr(config, "pretraining_tp", 1) != 1:
            return None
        return cls(model)

    @torch.inference_mode()
    def __call__(
        self, tokens: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask`` [b, L]: the runner's 0/1 mask, the block's own columns last; ``positions`` [b, n]."""
        return self.run(tokens, positions, self._attention_mask(mask, tokens.shape[1]), cache, keep)

    def run(
        self, tokens: torch.Tensor, positions: torch.Tensor, attend: torch.Tensor | None, cache: KVStore, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The step itself, given the boolean attention mask [b, 1, n, L] (or None: every slot) over the keys that
        ``cache.update`` returns: the same code runs over a growing cache and, captured in a CUDA graph, over
        fixed buffers (:mod:`specadapt.models.graphed`)."""
        base = self.model.model
        b, n = tokens.shape
        x = base.embed_tokens(tokens)
        cos, sin = (t.unsqueeze(2) for t in base.rotary_emb(x, positions))  # [b, n, 1, head_dim]
        H, KV, d = self.heads, self.kv_heads, self.head_dim
        for i, (layer, (qkv, gate_up)) in enumerate(zip(base.layers, self.fused)):
            attn = layer.self_attn
            h = _rms_norm(x, layer.input_layernorm)
            if qkv is not None:
                heads = qkv(h).view(b, n, H + 2 * KV, d)
                qk, v = heads[:, :, : H + KV], heads[:, :, H + KV :]
            else:
                qk = torch.cat([attn.q_proj(h).view(b, n, H, d), attn.k_proj(h).view(b, n, KV, d)], 2)
                v = attn.v_proj(h).view(b, n, KV, d)
            qk = _rotate(qk, cos, sin)  # the queries' and keys' heads in one pass
            q, k, v = qk[:, :, :H].transpose(1, 2), qk[:, :, H:].transpose(1, 2), v.transpose(1, 2)
            k, v = cache.update(k, v, i)
            o = grouped_sdpa(q, k, v, attend, attn.scaling)
            x = x + attn.o_proj(o.transpose(1, 2).reshape(b, n, -1))
            h = _rms_norm(x, layer.post_attention_layernorm)
            mlp = layer.mlp
            if gate_up is not None:
                gate, up = gate_up(h).split((mlp.gate_proj.out_features, mlp.up_proj.out_features), -1)
            else:
                gate, up = mlp.gate_proj(h), mlp.up_proj(h)
            x = x + mlp.down_proj(mlp.act_fn(gate) * up)
        hidden = _rms_norm(x[:, -keep:], base.norm)
        return self.model.lm_head(hidden).float(), hidden

    def fused_layers(self) -> list[Int4Linear]:
        """The fused projections this step calls instead of the parts (for timing hooks)."""
        return [m for pair in self.fused for m in pair if m is not None]

    def _attention_mask(self, mask: torch.Tensor, n: int) -> torch.Tensor | None:
        """Boolean [b, 1, n, L]: query i of the block sees the row's real slots up to its own, and always its own
        slot (a hole's query then reads finite values that nothing uses, where a row of no visible slot would give
        NaN); None where that is every slot (one token, no holes)."""
        if n == 1 and bool(mask.all()):
            return None
        b, length = mask.shape
        seen = mask.bool()[:, None, None, :].expand(b, 1, n, length).clone()
        block = seen[..., length - n :]
        block &= torch.ones((n, n), dtype=torch.bool, device=mask.device).tril()
        block |= torch.eye(n, dtype=torch.bool, device=mask.device)
        return seen
