"""The CUDA-graph runner (models/graphed.py): its fixed-buffer steps compute what the lean step computes.

On a CPU the same buffers and full-capacity one-token step run without capture; tests/test_cuda.py replays the
captured graph on a GPU."""

from __future__ import annotations

import gc

import pytest
import torch
from test_decode_step import _calls, tiny_qwen2

import specadapt.engine
from specadapt.engine import RequestConfig
from specadapt.methods import make_method
from specadapt.models import graphed
from specadapt.models.graphed import GraphedRunner, capacity_for
from specadapt.models.runner import ModelRunner

from conftest import hf_greedy, make_engine, tiny_llama
from test_engine_greedy import MIXED, PROMPTS


def test_capacity_is_a_power_of_two_past_the_minimum():
    assert [capacity_for(n) for n in (1, 512, 513, 1024, 1025)] == [512, 512, 1024, 1024, 2048]


@pytest.mark.parametrize("make", [lambda: tiny_llama(4, init_range=0.3), lambda: tiny_qwen2(4)], ids=["llama", "qwen2"])
def test_graphed_runner_computes_what_the_lean_runner_computes(make, monkeypatch):
    """Prompt, one-token steps, a padded block, a rejected token: the same logits and hidden states, with the
    capacity small enough that the cache outgrows its buffers on the way."""
    monkeypatch.setattr(graphed, "MIN_CAPACITY", 8)
    model = make()
    ref_logits, ref_hidden, real = _calls(model, lean=True)
    runner = GraphedRunner(model, want_hidden=True, capture=False)
    logits, hidden, _ = _calls(model, lean=True, runner=runner)
    assert runner.slab is not None and runner.slab.capacity == 32  # 20 prompt slots grew past 8 and 16
    for a, b, h_a, h_b, ok in zip(ref_logits, logits, ref_hidden, hidden, real, strict=True):
        torch.testing.assert_close(b[ok], a[ok], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h_b[ok], h_a[ok], rtol=1e-5, atol=1e-5)


def test_one_token_steps_over_a_long_run_match(monkeypatch):
    """Many one-token steps with rollbacks and a growing cache (3 + 40 - 16 slots: a capacity of 32): the fixed-buffer step's logits stay the lean
    step's."""
    monkeypatch.setattr(graphed, "MIN_CAPACITY", 4)
    loads = []
    load = graphed._Slab.load
    monkeypatch.setattr(graphed._Slab, "load", lambda self, cache, n: loads.append(self.capacity) or load(self, cache, n))
    model = tiny_qwen2(7)
    g = torch.Generator().manual_seed(1)
    runners = [ModelRunner(model, lean_steps=True), GraphedRunner(model, capture=False)]
    for r in runners:
        r.add_rows(1)
    prompt = torch.randint(0, 64, (1, 3), generator=g)
    for r in runners:
        r.forward(prompt, keep=3)
    for i in range(40):
        tokens = torch.randint(0, 64, (1, 1), generator=g)
        a, b = (r.forward(tokens)[0] for r in runners)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        if i % 5 == 4:  # the last two steps rejected
            for r in runners:
                r.keep_tail(2, torch.tensor([0]))
    assert runners[1].slab.capacity == 32 and runners[1].mask.shape == runners[0].mask.shape
    assert loads == [4, 8, 16, 32]  # the cache is copied only into new buffers: steps and rollbacks copy nothing
    runners[1].select_rows(torch.tensor([0]))  # reading the cache: its views are remade, as long as the mask
    assert runners[1].cache.get_seq_length() == runners[1].mask.shape[1] == runners[0].mask.shape[1]


def test_buffers_and_graphs_are_kept_per_batch_size(monkeypatch):
    """Rows leave and join (2 -> 1 -> 2 rows): the 2-row buffers come back (with their graphs) and the steps keep
    computing what the lean runner computes; only the last few batch sizes are kept."""
    monkeypatch.setattr(graphed, "KEPT_BATCH_SIZES", 2)
    model = tiny_qwen2(8)
    g = torch.Generator().manual_seed(2)
    runners = [ModelRunner(model, lean_steps=True), GraphedRunner(model, capture=False)]
    graphed_runner = runners[1]

    def step(rows: int) -> None:
        tokens = torch.randint(0, 64, (rows, 1), generator=g)
        a, b = (r.forward(tokens)[0] for r in runners)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)

    for r in runners:
        r.add_rows(2)
        r.forward(torch.randint(0, 64, (2, 5), generator=torch.Generator().manual_seed(3)), keep=5)
    step(2)
    two = graphed_runner.slab
    for r in runners:
        r.select_rows(torch.tensor([1]))
    step(1)
    assert graphed_runner.slab.rows == 1
    for r in runners:
        r.add_rows(1)
        r.fill_rows([1], [[4, 5, 6]])
    step(2)
    assert graphed_runner.slab is two and set(graphed_runner._slabs) == {1, 2}
    for r in runners:
        r.add_rows(1)
        r.fill_rows([2], [[7, 8]])
    step(3)
    assert set(graphed_runner._slabs) == {2, 3}  # the least recently used size went


@pytest.mark.parametrize("method", ["fixed:4", "adaedl", "autoregressive"])
def test_the_engine_on_fixed_buffers_decodes_what_it_decodes_without(target, close_draft, method, monkeypatch):
    """Both models on fixed buffers, requests joining and leaving a running batch (new buffers each time the batch
    size changes, a capacity the cache outgrows): the target's greedy outputs, and the same drafted and accepted
    counts as the engine's usual runners give."""
    monkeypatch.setattr(graphed, "MIN_CAPACITY", 8)

    def run():
        engine = make_engine(target, close_draft)
        batch = engine.batch(make_method(method))
        requests = [batch.add(PROMPTS[0], RequestConfig(max_new_tokens=16))]
        for round_no in range(60):
            if round_no in (1, 3, 4):
                k = len(requests)
                requests.append(batch.add(PROMPTS[k], MIXED[k]))
            batch.step()
        assert batch.active == 0
        return [(r.output, batch.result(r).stats.drafted, batch.result(r).stats.accepted) for r in requests]

    usual = run()
    made = []

    def fixed_buffers(model, want_hidden=False, exact=False, prefixes=None):
        made.append(GraphedRunner(model, want_hidden, capture=False, prefixes=prefixes))
        return made[-1]

    monkeypatch.setattr(specadapt.engine, "make_runner", fixed_buffers)
    assert run() == usual
    assert usual[0][0] == hf_greedy(target, PROMPTS[0], 16)
    assert made and all(r.slab is not None for r in made)  # both models' steps ran on the buffers


def test_a_step_that_cannot_be_captured_warns_once_and_runs_eagerly(monkeypatch):
    """A model whose step fails to capture (say, a layer that syncs with the host) keeps working, eagerly, with one
    warning; the steps compute what they compute without capture."""
    model = tiny_qwen2(9)
    attempts = []

    def fail(self, block, keep):
        attempts.append(keep)
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graphed._Slab, "_capture", fail)
    runners = [GraphedRunner(model, capture=False), GraphedRunner(model, capture=True)]
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 64, (1, 6), generator=g)
    for r in runners:
        r.add_rows(1)
        r.forward(prompt, keep=6)
    with pytest.warns(UserWarning, match="could not be captured in a CUDA graph .*operation not permitted.*running it eagerly"):
        tokens = torch.randint(0, 64, (1, 1), generator=g)
        a, b = (r.forward(tokens)[0] for r in runners)
    torch.testing.assert_close(b, a)
    for _ in range(3):
        tokens = torch.randint(0, 64, (1, 1), generator=g)
        a, b = (r.forward(tokens)[0] for r in runners)
        torch.testing.assert_close(b, a)
    assert attempts == [1] and not runners[1].capture  # tried once, then eager for good


def test_a_models_buffers_and_graphs_go_to_its_next_runner_never_to_two_at_once():
    """The engine starts a runner per batch: one started after another ended takes over its buffers (and graphs)
    and computes what a fresh one computes; one started while another of the same model runs gets its own."""
    model = tiny_qwen2(10)

    def stepped(runner: ModelRunner) -> tuple[ModelRunner, torch.Tensor]:
        runner.add_rows(1)
        runner.forward(torch.tensor([[1, 2, 3]]), keep=3)
        return runner, runner.forward(torch.tensor([[4]]))[0]

    first, _ = stepped(GraphedRunner(model, capture=False))
    second, _ = stepped(GraphedRunner(model, capture=False))
    assert second.slab is not first.slab  # both alive: never shared
    kept = second.slab
    del second
    gc.collect()
    third, logits = stepped(GraphedRunner(model, capture=False))
    assert third.slab is kept
    torch.testing.assert_close(logits, stepped(ModelRunner(model, lean_steps=True))[1], rtol=1e-5, atol=1e-5)
    assert stepped(GraphedRunner(model, capture=False))[0].slab not in (first.slab, kept)
