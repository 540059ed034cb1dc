"""The lean draft step (models/decode_step.py) computes what the transformers forward computes."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from specadapt.models.decode_step import DecodeStep
from specadapt.models.quant import DEQUANTIZE_ROWS, SIBLINGS, Int4Linear, _packs_side_by_side, fused_layer, quantize_model
from specadapt.models.runner import ModelRunner

from conftest import tiny_llama


def tiny_qwen2(seed: int, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen2Config(**{**dict(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   initializer_range=0.3), **overrides})
    return Qwen2ForCausalLM(config).eval()


def _calls(model, lean: bool, runner: ModelRunner | None = None) -> tuple[list[torch.Tensor], ...]:
    """Logits, hidden states and the real-slot masks of the runner's calls: a left-padded prompt (the
    transformers path in both runners), one-token steps, a block with a padded tail, a rejected tail (a hole)."""
    g = torch.Generator().manual_seed(0)
    runner = runner or ModelRunner(model, want_hidden=True, lean_steps=lean)
    on = model.device  # the inputs are drawn on the CPU, the same on any device
    runner.add_rows(2)
    prompt = torch.randint(0, 64, (2, 20), generator=g)
    valid = torch.ones_like(prompt)
    valid[0, :7] = 0
    runner.forward(prompt.to(on), valid.to(on), keep=20)
    calls = [(torch.randint(0, 64, (2, 1), generator=g), None) for _ in range(3)]
    padded = torch.ones((2, 6), dtype=torch.long)
    padded[1, :2] = 0  # row 1 feeds 4 tokens, left-padded
    calls.append((torch.randint(0, 64, (2, 6), generator=g), padded))
    logits, hidden, real = [], [], []
    for i, (tokens, ok) in enumerate(calls):
        out, h = runner.forward(tokens.to(on), None if ok is None else ok.to(on), keep=tokens.shape[1])
        logits.append(out)
        hidden.append(h)
        real.append(torch.ones(tokens.shape, dtype=torch.bool, device=on) if ok is None else ok.bool().to(on))
        if i == 1:
            runner.keep_tail(1, torch.tensor([0, 1], device=on))  # row 0's token rejected: a hole the next steps skip
    return logits, hidden, real


@pytest.mark.parametrize("make", [lambda: tiny_llama(4, init_range=0.3), lambda: tiny_qwen2(4)], ids=["llama", "qwen2"])
def test_lean_step_matches_the_transformers_forward(make):
    model = make()
    assert DecodeStep.for_model(model) is not None
    ref_logits, ref_hidden, real = _calls(model, lean=False)
    logits, hidden, _ = _calls(model, lean=True)
    for a, b, h_a, h_b, ok in zip(ref_logits, logits, ref_hidden, hidden, real, strict=True):
        torch.testing.assert_close(b[ok], a[ok], rtol=1e-5, atol=1e-5)  # padded queries' outputs are unused
        torch.testing.assert_close(h_b[ok], h_a[ok], rtol=1e-5, atol=1e-5)


def test_lean_step_with_a_quantized_draft():
    model = tiny_qwen2(5)
    quantize_model(model, "int4", 32)
    ref, _, real = _calls(model, lean=False)
    lean, _, _ = _calls(model, lean=True)
    for a, b, ok in zip(ref, lean, real, strict=True):
        torch.testing.assert_close(b[ok], a[ok], rtol=1e-4, atol=1e-4)


def test_unsupported_architectures_keep_the_transformers_forward():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2)).eval()
    sliding = tiny_qwen2(0, use_sliding_window=True, sliding_window=8, max_window_layers=0)
    assert DecodeStep.for_model(gpt2) is None
    assert DecodeStep.for_model(sliding) is None
    assert ModelRunner(gpt2, lean_steps=True).lean is None
    assert DecodeStep.for_model(tiny_qwen2(0)) is not None


def tiny_qwen2_tiles(seed: int) -> Qwen2ForCausalLM:
    """Projections whose output widths fill the int4 kernel's packing tiles, as the real draft's do: they fuse."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=64, hidden_size=128, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.3)
    return Qwen2ForCausalLM(config).eval()


def test_quantization_fuses_sibling_projections_into_one_layer_the_parts_slice():
    model = tiny_qwen2_tiles(7)
    floats = copy.deepcopy(model)
    report = quantize_model(model, "int4", 32)
    assert report.layers == 2 * 7 + 1  # every linear layer and the head, as without fusion
    xs = [torch.randn(rows, 128) for rows in (1, 3, DEQUANTIZE_ROWS)]  # the last through the kept copies
    for layer, plain in zip(model.model.layers, floats.model.layers, strict=True):
        for parent, alone, names in ((layer.self_attn, plain.self_attn, SIBLINGS[0]), (layer.mlp, plain.mlp, SIBLINGS[1])):
            fused = fused_layer(parent)
            parts = [getattr(parent, n) for n in names]
            assert fused is not None and fused.out_features == sum(p.out_features for p in parts)
            for x in xs:
                # Quantized on its own, each projection computes exactly what its slice of the fused layer does.
                want = torch.cat([Int4Linear.from_linear(getattr(alone, n), 32)(x) for n in names], -1)
                assert torch.equal(fused(x), want)
                assert torch.equal(torch.cat([p(x) for p in parts], -1), want)
            for name in ("packed", "wide", "bias"):  # one copy of the weights: the parts hold views
                if getattr(fused, name) is None:  # an MLP's projections have no bias
                    assert all(getattr(p, name) is None for p in parts)
                    continue
                storage = getattr(fused, name).untyped_storage().data_ptr()
                assert all(getattr(p, name).untyped_storage().data_ptr() == storage for p in parts)


def test_projections_that_cannot_share_a_kernel_call_stay_apart():
    # k 16 outputs wide, then v: part of a packing tile (32 or 64 rows, by CPU) with a part after it. gate/up are
    # 96 wide: whole tiles of 32 (AVX2) but not of 64 (AVX512), so they fuse where the kernel's packing allows.
    model = tiny_qwen2(5, num_key_value_heads=1)
    quantize_model(model, "int4", 32)
    mlp_fuses = _packs_side_by_side(64, (96, 96))
    assert all(fused_layer(layer.self_attn) is None for layer in model.model.layers)
    assert all((fused_layer(layer.mlp) is not None) == mlp_fuses for layer in model.model.layers)
    assert len(ModelRunner(model, lean_steps=True).lean.fused_layers()) == (2 if mlp_fuses else 0)
    int8 = tiny_qwen2_tiles(5)
    quantize_model(int8, "int8")
    assert fused_layer(int8.model.layers[0].self_attn) is None  # int8 layers are not fused


def test_lean_step_with_fused_projections_equals_the_unfused_one():
    model = tiny_qwen2_tiles(6)
    quantize_model(model, "int4", 32)
    unfused, _, real = _calls(model, lean=True, runner=_runner(model, fused=False))
    fused, _, _ = _calls(model, lean=True, runner=_runner(model, fused=True))
    ref, _, _ = _calls(model, lean=False)  # the transformers forward, calling the parts
    for a, b, r, ok in zip(unfused, fused, ref, real, strict=True):
        assert torch.equal(b[ok], a[ok])
        torch.testing.assert_close(b[ok], r[ok], rtol=1e-4, atol=1e-4)


def _runner(model, fused: bool) -> ModelRunner:
    runner = ModelRunner(model, want_hidden=True, lean_steps=True)
    assert len(runner.lean.fused_layers()) == 4  # q/k/v and gate/up of each of the 2 layers
    if not fused:
        runner.lean.fused = [(None, None)] * len(runner.lean.fused)
    return runner
