"""benchmarks/llama_cpp_compare.py: specadapt's side decodes exactly the asked tokens, greedily, with the prefill timed
apart; without llama-cpp-python the script says how to get it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import IdTokenizer, hf_greedy, tiny_llama

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "llama_cpp_compare.py"


@pytest.fixture(scope="module")
def lc():
    spec = importlib.util.spec_from_file_location("llama_cpp_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_specadapt_side_decodes_the_asked_tokens_greedily_past_end_of_sequence(lc):
    target = tiny_llama(0)
    runner = lc.Specadapt(target, IdTokenizer())
    prompt = [3, 9, 4, 11]
    tokens, prefill_s, decode_s = runner.generate(prompt, 7)
    assert tokens == hf_greedy(target, prompt, 7)  # the target's own greedy tokens, none cut at an end of sequence
    assert prefill_s > 0 and decode_s > 0


def test_without_llama_cpp_python_the_script_says_how_to_install_it(lc, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    with pytest.raises(SystemExit, match=r"llama-cpp-python is not installed: pip install llama-cpp-python"):
        lc.LlamaCpp(tmp_path / "model.gguf", threads=1, context=64)


def test_unknown_engines_are_refused(lc, capsys):
    with pytest.raises(SystemExit):
        lc.main(["--engines", "llama.cpp,fp8"])
    assert "unknown engine(s) fp8: use llama.cpp, bf16, int8, int4" in capsys.readouterr().err
