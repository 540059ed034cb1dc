"""A weight-only quantized target (``target_quant``): speculative output is token-identical to that quantized
target's own greedy decoding, every place results are reported says which target they are lossless w.r.t.,
bad settings are refused before loading, and the draft's quantization default has one source.

Tiny fp32 Llamas (hidden 32, MLP 64) as in tests/test_quant.py, so int4 group size 32 fits every layer."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from specadapt import SpecDecoder
from specadapt.bench.runner import BenchSettings, run_bench
from specadapt.engine import RequestConfig, SpeculativeEngine
from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.models import zoo
from specadapt.models.quant import Int4Linear, Int8Linear, group_size_help, quant_help, quantize_model
from specadapt.serve.settings import ServeSettings

from conftest import hf_greedy, make_engine, save_tiny_checkpoint
from test_bench import TinyDecoder, settings_for

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]]
WORDS = [f"w{i}" for i in range(62)]


@pytest.fixture(scope="module")
def quantized_targets(target) -> dict:
    out = {}
    for scheme in ("int8", "int4"):
        model = copy.deepcopy(target)
        quantize_model(model, scheme, role="target")
        out[scheme] = model
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tquant")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    save_tiny_checkpoint(root / "draft", 1, WORDS)
    return root


# --- losslessness w.r.t. the quantized target ----------------------------------------------------


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("method", ["fixed:3", "adaedl"])
def test_greedy_output_equals_the_quantized_targets_own(scheme, method, target, close_draft, quantized_targets):
    quantized = quantized_targets[scheme]
    with torch.no_grad():  # really another model than the float target
        assert not torch.equal(quantized(torch.tensor([PROMPTS[0]])).logits, target(torch.tensor([PROMPTS[0]])).logits)
    # The float draft of the float target: it agrees with the quantized target often, not always.
    results = make_engine(quantized, close_draft).generate(PROMPTS, make_method(method), RequestConfig(max_new_tokens=20))
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == hf_greedy(quantized, prompt, 20)
        assert result.lossless and result.settings["target_quant"] == scheme
        assert result.settings["target_group_size"] == (32 if scheme == "int4" else None)
    assert 0.0 < sum(r.stats.acceptance_rate for r in results) / len(results) < 1.0  # real drafting, partly accepted


def test_api_quantizes_the_target_and_records_it(checkpoints):
    dec = SpecDecoder.from_pretrained(str(checkpoints / "target"), str(checkpoints / "draft"), dtype="float32",
                                      device="cpu", draft_quant="none", target_quant="int4", target_group_size=32)
    assert any(isinstance(m, Int4Linear) for m in dec.target.modules())
    assert not any(isinstance(m, (Int4Linear, Int8Linear)) for m in dec.draft.modules())  # pinned: a float draft
    fast = dec.generate("w1 w2 w3", method="fixed:3", max_new_tokens=12)
    assert fast.token_ids == dec.generate("w1 w2 w3", method="autoregressive", max_new_tokens=12).token_ids
    assert (fast.settings["target_quant"], fast.settings["target_group_size"]) == ("int4", 32)
    plain = SpecDecoder.from_pretrained(str(checkpoints / "target"), None, dtype="float32", device="cpu")
    assert plain.generate("w1", method="autoregressive", max_new_tokens=2).settings["target_quant"] == "none"


# --- bad settings: one message, before anything is loaded ----------------------------------------

BAD = [
    (dict(target_quant="int3"), "unknown target quantization 'int3'; use one of: none, int8, int4."),
    (dict(target_quant="int4", target_group_size=48),
     "target int4 group size 48 is not supported; torch's CPU int4 kernel takes 32, 64, 128, 256: pick one of those "
     "(32 is the most accurate)."),
    (dict(target_quant="int8", target_group_size=32),
     "a target group size applies to int4 only (int8 uses one scale per output row); leave the group size unset."),
]


@pytest.mark.parametrize("bad,message", BAD)
def test_bad_target_quant_is_refused_everywhere_with_one_message(bad, message, tmp_path):
    with pytest.raises(SpecAdaptError) as api:
        SpecDecoder.from_pretrained(str(tmp_path / "nowhere"), None, **bad)  # checked before loading
    with pytest.raises(SpecAdaptError) as bench:
        BenchSettings(datasets=["gsm8k"], **bad)
    with pytest.raises(SpecAdaptError) as serve:
        ServeSettings(**bad)
    assert str(api.value) == str(bench.value) == str(serve.value) == message


def test_cli_bad_target_quant_fails_before_loading():
    from typer.testing import CliRunner

    from specadapt.cli import app

    result = CliRunner().invoke(app, ["generate", "w1", "--target", "no/such/model", "--target-quant", "int3"])
    assert isinstance(result.exception, SpecAdaptError)
    assert str(result.exception) == BAD[0][1]


# --- where results are reported ------------------------------------------------------------------


def test_cli_generate_option_and_json(checkpoints):
    import typer
    from typer.testing import CliRunner

    from specadapt.cli import app

    options = {p.name: p for p in typer.main.get_command(app).commands["generate"].params}
    bench = {f.name: f for f in BenchSettings.__dataclass_fields__.values()}
    for name in ("draft_quant", "draft_group_size", "target_quant", "target_group_size"):  # the settings' help, once
        assert options[name].help == bench[name].metadata["help"]
    assert options["target_quant"].help == quant_help("target") and "lossless w.r.t. the quantized target" in quant_help("target")
    assert options["target_group_size"].help == group_size_help("target")
    assert (options["target_quant"].default, options["draft_quant"].default) == ("none", zoo.DEFAULT_DRAFT_QUANT)
    assert "--target-quant" in CliRunner().invoke(app, ["generate", "--help"], terminal_width=200).output

    result = CliRunner().invoke(app, ["generate", "w1 w2", "--target", str(checkpoints / "target"), "--draft",
                                      str(checkpoints / "draft"), "--method", "fixed:3", "--max-new-tokens", "6", "--json",
                                      "--dtype", "float32", "--device", "cpu", "--draft-quant", "none", "--target-quant", "int8"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["settings"]["target_quant"] == "int8" and record["lossless"] is True


class QuantizedTinyDecoder(TinyDecoder):
    def __init__(self, scheme: str) -> None:
        super().__init__()
        quantize_model(self.target, scheme, role="target")
        self.engine = SpeculativeEngine(self.target, self.draft, self.tokenizer, [])


def test_bench_records_and_reports_the_quantized_target(tmp_path, prompts_file):
    settings = settings_for(prompts_file, methods="fixed:3", limit=2, target_quant="int8")
    summary = run_bench(settings, tmp_path / "run", decoder=QuantizedTinyDecoder("int8"), progress=False, log=lambda _: None)
    assert json.loads((tmp_path / "run" / "settings.json").read_text())["settings"]["target_quant"] == "int8"
    assert summary["target_quant"] == "int8"
    assert summary["datasets"]["file"]["fixed:3"]["agreement_exact"] == 1.0  # identical to the int8 target-only text
    report = (tmp_path / "run" / "report.md").read_text()
    assert "**Quantized target (int8, weight-only):**" in report
    assert "lossless w.r.t. the quantized target, not the float one" in report.split("## ")[0]  # in the header
    # A decoder whose target is not the one the settings name would mislabel every result.
    with pytest.raises(SpecAdaptError, match=r"^the decoder's target is quantized 'none' but the settings say "
                                             r"target_quant 'int8'; pass target_quant='none'\.$"):
        run_bench(settings, tmp_path / "other", decoder=TinyDecoder(), progress=False, log=lambda _: None)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"prompt number {i}"}) + "\n" for i in range(3)))
    return path


# --- the draft's quantization default: one constant --------------------------------------------


@pytest.mark.parametrize("name, constant", [("draft_quant", "DEFAULT_DRAFT_QUANT"), ("draft_vocab", "DEFAULT_DRAFT_VOCAB")])
def test_every_draft_default_reads_the_one_constant(name, constant):
    """Flipping zoo.DEFAULT_DRAFT_QUANT (e.g. to "int4") or zoo.DEFAULT_DRAFT_VOCAB must change the API, generate,
    bench and serve together: each default is that constant, by value and in the source (no copy of "none" that a
    flip would miss). generate, bench and serve take it from one ModelSettings, which none of them redefines."""
    import inspect
    import re

    import typer

    from specadapt import cli
    from specadapt.models.settings import ModelSettings

    generate = {p.name: p for p in typer.main.get_command(cli.app).commands["generate"].params}
    defaults = [inspect.signature(SpecDecoder.from_pretrained).parameters[name].default,
                getattr(BenchSettings(datasets=["gsm8k"]), name), getattr(ServeSettings(), name), generate[name].default]
    assert defaults == [getattr(zoo, constant)] * 4
    for source in (inspect.getsource(SpecDecoder.from_pretrained), inspect.getsource(ModelSettings)):
        assert re.search(rf"{name}: [A-Za-z |]+ = (field\(default=|typer\.Option\()?(zoo\.)?{constant}\b", source)
    assert issubclass(BenchSettings, ModelSettings) and issubclass(ServeSettings, ModelSettings)
    for source in (inspect.getsource(BenchSettings), inspect.getsource(ServeSettings),
                   inspect.getsource(inspect.unwrap(cli.generate))):
        assert f"{name}:" not in source  # no field or option of its own
