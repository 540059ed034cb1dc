"""The machine record every benchmark carries, and the warning for bf16 on a CPU without native bf16."""

import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from specadapt import SpecDecoder
from specadapt import cli
from specadapt.errors import SpecAdaptError, SpecAdaptWarning
from specadapt.models import hardware, loading
from specadapt.models.quant import Int4Linear, quantize_model, wide_rows

from conftest import save_tiny_checkpoint

WORDS = [f"w{i}" for i in range(62)]


@pytest.fixture
def slow_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    save_tiny_checkpoint(root / "draft", 1, WORDS)
    return root


def test_machine_names_the_cpu_kind():
    record = hardware.machine()
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["native_bf16"] is hardware.native_bf16() and record["torch_threads"] == torch.get_num_threads()
    assert isinstance(record["cpu"], str) and record["cpu"]


@pytest.fixture
def no_fused(monkeypatch):
    monkeypatch.setitem(hardware._fused, "failed", "RuntimeError: no C++ compiler")


def test_the_warning_is_only_for_bf16_on_a_cpu_without_native_bf16_or_the_fused_product(slow_bf16, monkeypatch):
    assert hardware.slow_bf16_warning(torch.bfloat16, torch.device("cpu")) is None  # the fused product works here
    monkeypatch.setitem(hardware._fused, "failed", "RuntimeError: no C++ compiler")
    message = hardware.slow_bf16_warning(torch.bfloat16, torch.device("cpu"))
    assert "could not build the fused bf16 product (RuntimeError: no C++ compiler)" in message
    assert "has no native bf16 matrix instructions" in message and "--method autoregressive" in message
    assert "keeps no float32 copy of its weights (--no-float32-copies, or too little free memory" in message
    assert hardware.slow_bf16_warning(torch.float32, torch.device("cpu")) is None
    assert hardware.slow_bf16_warning(torch.bfloat16, torch.device("cuda")) is None
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    assert hardware.slow_bf16_warning(torch.bfloat16, torch.device("cpu")) is None


def test_loading_a_bf16_pair_without_float32_copies_warns_once_and_target_only_does_not(slow_bf16, no_fused, checkpoints):
    target, draft = str(checkpoints / "target"), str(checkpoints / "draft")
    with pytest.warns(SpecAdaptWarning, match="no native bf16") as caught:
        SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu", float32_copies=False)
    assert len([w for w in caught if issubclass(w.category, SpecAdaptWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpecAdaptWarning)
        SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu")  # the target keeps float32 copies
        SpecDecoder.from_pretrained(target, None, dtype="bfloat16", device="cpu")  # no drafts to verify
        SpecDecoder.from_pretrained(target, draft, dtype="float32", device="cpu")
        SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu", target_quant="int4")


def test_the_cli_prints_the_warning_as_one_line(capsys):
    cli._show_warning(SpecAdaptWarning("this CPU is slow"), SpecAdaptWarning, "x.py", 1)
    err = capsys.readouterr().err
    assert err.strip() == "warning: this CPU is slow"


# --- wide bf16 products in float32 ------------------------------------------------------------------------------


def _wide_linear(n: int = 48, k: int = 32, bias: bool = True, fused: bool = False) -> nn.Linear:
    torch.manual_seed(n + k)
    layer = nn.Linear(k, n, bias=bias).to(torch.bfloat16)
    assert hardware.use_float32_for_wide_products(layer) == 1 and type(layer) is hardware.WideFloat32Linear
    hardware.use_fused_products(layer, fused)
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_a_wide_block_is_multiplied_in_float32_and_a_narrow_one_as_before(bias, monkeypatch):
    monkeypatch.setattr(hardware, "transposed_products_win", lambda: False)  # F.linear's summation order, to compare exactly
    layer = _wide_linear(bias=bias)
    w, b = layer.weight.float(), None if layer.bias is None else layer.bias.float()
    wide = torch.randn(2, hardware.WIDE_ROWS // 2, 32, dtype=torch.bfloat16)  # 16 rows in all
    narrow = wide[:1, :3]
    with torch.inference_mode():
        assert torch.equal(layer(wide), F.linear(wide.float(), w, b).bfloat16())
        assert torch.equal(layer(narrow), F.linear(narrow, layer.weight, layer.bias))


def test_with_autograd_the_wide_path_is_not_taken_and_gradients_flow():
    layer = _wide_linear()
    x = torch.randn(hardware.WIDE_ROWS, 32, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
    y.float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_switching_keeps_the_parameters_and_switches_back():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert hardware.use_float32_for_wide_products(model) == 2
    assert all(type(m) is hardware.WideFloat32Linear for m in (model[0], model[2]))
    assert model.state_dict().keys() == before.keys() and all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert hardware.use_float32_for_wide_products(model, on=False) == 2 and type(model[0]) is nn.Linear


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
def test_load_model_switches_layers_by_what_this_cpu_multiplies_fast(native, transposed, monkeypatch, checkpoints):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    monkeypatch.setattr(hardware, "transposed_products_win", lambda: transposed)
    monkeypatch.setattr(hardware, "pairs_one_rows", lambda: native)
    monkeypatch.setattr(hardware, "PAIRED_MIN_ELEMENTS", 1)  # the tiny model's layers are all small
    monkeypatch.setattr(hardware, "PAIRED_MIN_IN_FEATURES", 1)
    models = {dtype: loading.load_model(str(checkpoints / "target"), dtype, "cpu") for dtype in ("bfloat16", "float32")}
    kinds = {dtype: {type(m) for m in model.modules() if isinstance(m, nn.Linear) and m is not model.lm_head}
             for dtype, model in models.items()}
    assert kinds["float32"] == ({hardware.Float32Linear} if transposed else {nn.Linear})
    assert type(models["float32"].lm_head) is (hardware.Float32Linear if transposed else nn.Linear)  # no copy: the head too
    assert kinds["bfloat16"] == ({hardware.PairedRowLinear} if native else {hardware.WideFloat32Linear})
    head = models["bfloat16"].lm_head
    assert type(head) is (hardware.PairedRowLinear if native else hardware.WideFloat32Linear)
    assert native or head.convert is False  # fused blocks, but no per-call float32 copy: that would take a GB


@pytest.mark.parametrize("bias", [True, False])
def test_a_float32_block_of_several_rows_computes_f_linear_in_the_faster_layout(bias, monkeypatch):
    torch.manual_seed(0)
    layer = nn.Linear(32, 48, bias=bias)
    layer.__class__ = hardware.Float32Linear
    for shape in [(1, 32), (2, 32), (2, 3, 32), (70, 32)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            monkeypatch.setattr(hardware, "transposed_products_win", lambda: True)
            y = layer(x)
            monkeypatch.setattr(hardware, "transposed_products_win", lambda: False)
            assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # the other layout: torch's own
        assert y.shape == (*shape[:-1], 48) and y.is_contiguous()
        torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)  # summation order
    monkeypatch.setattr(hardware, "transposed_products_win", lambda: True)
    x = torch.randn(4, 32, requires_grad=True)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))  # with autograd: torch's path, gradients flow
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize("native", [True, False])
def test_blocks_of_12_to_32_rows_multiply_padded_to_a_multiple_of_8_rows_without_native_bf16(native, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    monkeypatch.setattr(hardware, "transposed_products_win", lambda: True)
    expected = {8: 8, 11: 11, 12: 16, 13: 16, 16: 16, 17: 24, 31: 32, 32: 32, 33: 33}
    assert {n: hardware.padded_rows(n) for n in expected} == (dict(zip(expected, expected)) if native else expected)
    hardware.use_row_padding(False)
    try:
        assert {n: hardware.padded_rows(n) for n in expected} == dict(zip(expected, expected))
    finally:
        hardware.use_row_padding(True)
    seen = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: seen.append(b.shape[1]) or mm(a, b))
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32), torch.randn(48)
    for shape in [(13, 32), (2, 7, 32), (5, 32)]:
        x = torch.randn(*shape)
        y = hardware.float32_product(x, weight, bias)
        assert y.shape == (*shape[:-1], 48) and y.is_contiguous()
        torch.testing.assert_close(y, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert seen == ([13, 14, 5] if native else [16, 16, 5])  # the padded rows were multiplied, and cut off after


def test_switched_layers_are_quantized_and_int4_prompts_multiply_in_float32(slow_bf16, checkpoints):
    model = loading.load_model(str(checkpoints / "target"), "bfloat16", "cpu")
    switched = sum(type(m) is hardware.WideFloat32Linear for m in model.modules())
    assert quantize_model(model, "int4").layers == switched  # the head included
    layer = next(m for m in model.modules() if isinstance(m, Int4Linear) and m.wide is not None)
    x = torch.randn(wide_rows(torch.bfloat16, torch.device("cpu")), layer.in_features, dtype=torch.bfloat16)
    expected = F.linear(x.float(), layer.wide.float()).bfloat16()
    with torch.inference_mode():
        assert torch.equal(layer(x), expected)


# --- one bf16 row as two (CPUs with native bf16) ----------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_one_bf16_row_is_multiplied_as_two_and_other_products_as_before(bias):
    torch.manual_seed(0)
    layer = nn.Linear(32, 48, bias=bias).to(torch.bfloat16)
    layer.__class__ = hardware.PairedRowLinear
    with torch.inference_mode():
        for shape in [(32,), (1, 32), (1, 1, 32)]:
            x = torch.randn(shape, dtype=torch.bfloat16)
            y = layer(x)
            assert y.shape == (*shape[:-1], 48)
            assert torch.equal(y.reshape(-1), F.linear(x.reshape(1, 32).repeat(2, 1), layer.weight, layer.bias)[0])
        x = torch.randn(2, 3, 32, dtype=torch.bfloat16)  # several rows: torch's own product
        assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    x = torch.randn(1, 32, dtype=torch.bfloat16, requires_grad=True)  # with autograd: torch's own path
    layer(x).float().sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@pytest.mark.parametrize("wins", [True, False])
def test_only_large_layers_are_paired_and_only_on_the_cpus_where_it_pays(wins, monkeypatch):
    monkeypatch.setattr(hardware, "pairs_one_rows", lambda: wins)
    monkeypatch.setattr(hardware, "PAIRED_MIN_ELEMENTS", 64 * 32)
    monkeypatch.setattr(hardware, "PAIRED_MIN_IN_FEATURES", 32)
    # large enough; too few weights; too few inputs
    model = nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 8), nn.Linear(16, 256)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert hardware.use_paired_rows(model) == (1 if wins else 0)
    assert type(model[0]) is (hardware.PairedRowLinear if wins else nn.Linear)
    assert type(model[1]) is nn.Linear and type(model[2]) is nn.Linear
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert hardware.use_paired_rows(model, anywhere=True) == (0 if wins else 1)  # a benchmark measures both
    assert hardware.use_paired_rows(model, on=False) == 1 and type(model[0]) is nn.Linear


@pytest.mark.parametrize("native, amx, pairs", [(False, False, False), (True, True, False), (True, False, True)])
def test_one_rows_are_paired_on_cpus_with_native_bf16_and_no_amx(native, amx, pairs, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    hardware.pairs_one_rows.cache_clear()
    try:
        assert hardware.pairs_one_rows() is pairs
    finally:
        hardware.pairs_one_rows.cache_clear()


def test_paired_layers_are_quantized_like_plain_ones(monkeypatch, checkpoints):
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    monkeypatch.setattr(hardware, "pairs_one_rows", lambda: True)
    monkeypatch.setattr(hardware, "PAIRED_MIN_ELEMENTS", 1)
    monkeypatch.setattr(hardware, "PAIRED_MIN_IN_FEATURES", 1)
    model = loading.load_model(str(checkpoints / "target"), "bfloat16", "cpu")
    paired = sum(type(m) is hardware.PairedRowLinear for m in model.modules())
    assert paired > 0 and quantize_model(model, "int4").layers == paired
    assert not any(isinstance(m, hardware.PairedRowLinear) for m in model.modules())


# --- float32 copies of a bf16 target's weights ------------------------------------------------------------------


def test_float32_copies_serve_blocks_of_copy_rows_and_leave_the_checkpoint_alone(monkeypatch):
    monkeypatch.setattr(hardware, "transposed_products_win", lambda: False)  # F.linear's summation order, to compare exactly
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16, bias=False)).to(torch.bfloat16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert hardware.keep_float32_copies(model) == 4 * (32 * 48 + 48 * 16)
    hardware.use_fused_products(model, False)  # blocks of a few rows would take the fused pass first
    first = model[0]
    assert type(first) is hardware.WideFloat32Linear and first.weight32.dtype == torch.float32
    assert torch.equal(first.weight32, first.weight.float())
    assert model.state_dict().keys() == before.keys()  # the copies are not part of the checkpoint
    block = torch.randn(hardware.COPY_ROWS, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(first(block), F.linear(block.float(), first.weight32, first.bias.float()).bfloat16())
        narrow = block[: hardware.COPY_ROWS - 1]
        assert torch.equal(first(narrow), F.linear(narrow, first.weight, first.bias))  # fewer rows: bf16 as before
    assert hardware.keep_float32_copies(model, on=False) == 0 and first.weight32 is None


def test_a_slow_bf16_target_keeps_float32_copies_where_memory_allows(slow_bf16, monkeypatch, checkpoints):
    target, draft = str(checkpoints / "target"), str(checkpoints / "draft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecAdaptWarning)
        decoder = SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu")
        head = decoder.target.lm_head
        assert type(head) is hardware.WideFloat32Linear and torch.equal(head.weight32, head.weight.float())
        assert all(m.weight32 is None for m in decoder.draft.modules() if isinstance(m, hardware.WideFloat32Linear))
        refused = SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu", float32_copies=False)
        alone = SpecDecoder.from_pretrained(target, None, dtype="bfloat16", device="cpu")  # nothing to verify
        assert not hardware.has_float32_copies(refused.target) and not hardware.has_float32_copies(alone.target)
        batched = SpecDecoder.from_pretrained(target, None, dtype="bfloat16", device="cpu", float32_copies=True)
        assert hardware.has_float32_copies(batched.target)  # a target-only server multiplies batches
        quantized = SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu", target_quant="int4")
        assert not any(isinstance(m, hardware.WideFloat32Linear) for m in quantized.target.modules())
        monkeypatch.setattr(hardware, "memory_available", lambda: 1024)  # no room for the copies
        crowded = SpecDecoder.from_pretrained(target, draft, dtype="bfloat16", device="cpu")
        assert not hardware.has_float32_copies(crowded.target)


def test_float32_copies_takes_auto_true_or_false(checkpoints):
    with pytest.raises(SpecAdaptError, match="float32_copies must be 'auto', True or False, got 'yes'"):
        SpecDecoder.from_pretrained(str(checkpoints / "target"), None, float32_copies="yes")


# --- blocks of a few rows in one fused pass over the bf16 weight ------------------------------------------------


def _within_bf16_rounding(y: torch.Tensor, exact: torch.Tensor) -> bool:
    """``y`` (bf16) is ``exact`` (float32) rounded to bf16, give or take float32 summation order: within half a
    bf16 ulp (2^-8 relative) plus a float32-sized slack."""
    return bool(((y.float() - exact).abs() <= exact.abs() * 2**-8 + 1e-4).all())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(2, 32), (8, 32), (2, 9, 32), (hardware.FUSED_ROWS, 32)])
def test_a_few_rows_take_one_fused_pass_and_accumulate_in_float32(bias, shape):
    layer = _wide_linear(bias=bias, fused=True)
    x = torch.randn(*shape, dtype=torch.bfloat16)
    exact = F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())
    with torch.inference_mode():
        y = layer(x)
        one = layer(x.reshape(-1, 32)[:1])
    assert y.dtype == torch.bfloat16 and y.shape == (*shape[:-1], 48)
    assert _within_bf16_rounding(y, exact) and hardware._fused["kernels"]  # compiled here, and used
    assert torch.equal(one, F.linear(x.reshape(-1, 32)[:1], layer.weight, layer.bias))  # one row: bf16 as before


def test_a_pairs_many_weight_shapes_all_get_compiled_kernels(monkeypatch):
    """Dynamo treats a layer's weight (a parameter) as of static shape and recompiles a function for each new one,
    at most 8 times; one function for every shape spent that on a target and a bf16 draft, and the shapes after
    the eighth ran uncompiled (the whole weight converted to float32 per call). Nine shapes, each compiled."""
    import torch._dynamo.utils as dynamo_utils

    monkeypatch.setitem(hardware._fused, "kernels", {})  # none compiled yet, whatever ran before in this process
    layers = [_wide_linear(n, k, fused=True) for n, k in
              [(16, 16), (24, 16), (40, 16), (16, 56), (8, 8), (32, 8), (8, 24), (48, 24), (24, 40)]]
    before = dynamo_utils.counters["stats"]["unique_graphs"]
    with torch.inference_mode():
        for layer in layers:
            x = torch.randn(2, layer.in_features, dtype=torch.bfloat16)
            assert _within_bf16_rounding(layer(x), F.linear(x.float(), layer.weight.float(), layer.bias.float()))
    assert dynamo_utils.counters["stats"]["unique_graphs"] - before == len(layers)


def test_fused_blocks_split_into_near_equal_chunks(monkeypatch):
    seen = []
    monkeypatch.setattr(hardware, "_kernel", lambda rows, shape: lambda part, weight: seen.append(rows) or part @ weight.float().t())
    layer = _wide_linear(fused=True)
    for rows in (2, 8, 9, 15, hardware.FUSED_ROWS):
        seen.clear()
        with torch.inference_mode():
            layer(torch.randn(rows, 32, dtype=torch.bfloat16))
        assert sum(seen) == rows and max(seen) <= hardware.FUSED_CHUNK and max(seen) - min(seen) <= 1
    assert seen == [hardware.FUSED_CHUNK] * (hardware.FUSED_ROWS // hardware.FUSED_CHUNK)
    seen.clear()
    with torch.inference_mode():
        layer(torch.randn(hardware.FUSED_ROWS + 1, 32, dtype=torch.bfloat16))
        assert seen == []  # more rows: the float32 paths
        hardware.keep_float32_copies(layer)
        layer(torch.randn(hardware.FUSED_CHUNK + 1, 32, dtype=torch.bfloat16))
        assert seen == []  # with a float32 copy, from one chunk on: the copy
        layer(torch.randn(hardware.FUSED_CHUNK, 32, dtype=torch.bfloat16))
    assert seen == [hardware.FUSED_CHUNK]


def test_without_a_compiler_the_fused_pass_warns_once_and_torch_computes_the_block(monkeypatch):
    def broken(part, weight):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(hardware, "_kernel", lambda rows, shape: broken)
    monkeypatch.setitem(hardware._fused, "failed", None)
    layer = _wide_linear(fused=True)
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    with torch.inference_mode():
        with pytest.warns(SpecAdaptWarning, match=r"could not build the fused bf16 product \(RuntimeError: no C\+\+ "
                                                  r"compiler found\), so blocks of a few tokens take torch's bf16"):
            y = layer(x)
        assert torch.equal(y, F.linear(x, layer.weight, layer.bias))
        with warnings.catch_warnings():
            warnings.simplefilter("error", SpecAdaptWarning)
            assert torch.equal(layer(x), y)  # once failed, never tried again


def test_compiling_ahead_runs_every_chunk_size_for_every_weight_shape_once(monkeypatch):
    seen = []
    monkeypatch.setattr(hardware, "_kernel", lambda rows, shape: lambda part, weight: seen.append((rows, tuple(weight.shape)))
                        or part @ weight.float().t())
    model = nn.Sequential(nn.Linear(32, 48), nn.Linear(48, 32), nn.Linear(32, 48)).to(torch.bfloat16)  # two shapes
    assert hardware.compile_fused_products(model) == 0  # not switched: nothing multiplies fused
    hardware.use_float32_for_wide_products(model)
    sizes = range(2, hardware.FUSED_CHUNK + 1)
    assert hardware.compile_fused_products(model, None) == 2 * len(sizes)
    assert sorted(seen) == sorted((rows, shape) for rows in sizes for shape in ((48, 32), (32, 48)))
    hardware.use_fused_products(model, False)
    assert hardware.compile_fused_products(model) == 0


def test_the_float32_scratch_buffer_first_made_under_inference_mode_is_writable_outside_it():
    """A bf16 layer's wide product may first run under inference_mode (decoding) and later under no_grad (a
    distillation teacher's forward in the same process): the shared buffer must take both."""
    weight = torch.randn(3, 7, dtype=torch.bfloat16)  # a shape no other test uses: its buffer is made here
    with torch.inference_mode():
        assert torch.equal(hardware.float32_weight(weight), weight.float())
    with torch.no_grad():
        assert torch.equal(hardware.float32_weight(weight * 2), (weight * 2).float())
