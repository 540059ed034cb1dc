"""Offline replay of draft-length policies: same counts as the engine, oracle bound, cost model, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import make_engine, perturbed_copy, tiny_llama

from specadapt import SpecAdaptError
from specadapt.bench.replay import CostModel, Trajectory, make_trajectory, replay, replay_oracle
from specadapt.engine import RequestConfig
from specadapt.heads import AcceptanceHead, save_head
from specadapt.methods import make_method

PROMPTS = [[1, 2, 3, 4, 5], [9, 10, 11, 12, 13, 14, 15], [42]]
N = 40


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(0, init_range=0.3)
    return target, perturbed_copy(target, 0.15)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    torch.manual_seed(0)
    head = AcceptanceHead(32, num_blocks=1)
    with torch.no_grad():
        head.out.bias[1] += 2.0  # mostly accept, varied: stops at varied lengths
    return str(save_head(head, tmp_path_factory.mktemp("head") / "h"))


@pytest.fixture(scope="module", params=["producing", "features"])
def no_lag_head(request, tmp_path_factory):
    torch.manual_seed(1)
    head = AcceptanceHead(32, num_blocks=1, input=request.param)
    with torch.no_grad():
        head.out.bias[1] += 2.0
    return str(save_head(head, tmp_path_factory.mktemp("head") / "p"))


def test_replay_gives_the_engines_counts_for_every_lossless_policy(models, head, no_lag_head):
    target, draft = models
    free = make_engine(target, draft).generate([PROMPTS[0]], make_method("autoregressive"), RequestConfig(N))[0]
    eos = free.token_ids[25]  # so that some generations end on EOS and some on the length limit
    engine = make_engine(target, draft, eos=[eos])
    config = RequestConfig(max_new_tokens=N)
    specs = ["fixed:3", "fixed:7", "heuristic", "confidence:threshold=0.5", "dynamic-confidence", "adaedl",
             "adasd-stop:n_min=2", f"specdecpp:head={head},threshold=0.5", f"specdecpp:head={no_lag_head},threshold=0.5"]
    finishes, wasted = set(), 0
    for spec in specs:
        live, replayed = make_method(spec), make_method(spec)  # one instance each, kept across prompts
        for prompt in PROMPTS:
            result = engine.generate([prompt], live, config)[0]
            greedy = engine.generate([prompt], make_method("autoregressive"), config)[0]
            assert result.token_ids == greedy.token_ids  # lossless: the trajectory is the target's own output
            traj = make_trajectory(draft, prompt, greedy.token_ids, N, [eos])
            got, want = replay(replayed, traj), result.stats
            assert (got.rounds, got.drafted, got.accepted) == (want.rounds, want.drafted, want.accepted), spec
            assert got.position_reached == want.position_reached, spec
            assert got.generated_tokens == want.generated_tokens == len(greedy.token_ids), spec
            finishes.add(result.finish_reason)
            wasted += want.drafted - want.accepted
        assert finishes == {"eos", "length"} and wasted > 0  # the check saw both endings and rejections


def test_oracle_wastes_no_draft_and_needs_fewest_rounds(models):
    target, draft = models
    engine = make_engine(target, draft)
    greedy = engine.generate([PROMPTS[0]], make_method("autoregressive"), RequestConfig(max_new_tokens=N))[0]
    traj = make_trajectory(draft, PROMPTS[0], greedy.token_ids, N, want_hidden=False)
    oracle = replay_oracle(traj)
    assert oracle.drafted == oracle.accepted and oracle.generated_tokens == N
    for spec in ("fixed:1", "fixed:4", "fixed:16", "heuristic"):
        stats = replay(make_method(spec), traj)
        assert oracle.rounds <= stats.rounds and oracle.accepted >= stats.accepted


def _hand_made(draft_argmax: list[int], y: list[int], max_new_tokens: int, eos=()) -> Trajectory:
    logits = torch.full((len(y), 16), -5.0)
    logits[torch.arange(len(y)), torch.tensor(draft_argmax)] = 5.0
    return Trajectory(3, y, logits, None, max_new_tokens, eos)


def test_oracle_and_fixed_k_on_a_hand_worked_trajectory():
    traj = _hand_made([1, 2, 9, 4, 5, 6, 7], [1, 2, 3, 4, 5, 6, 7], max_new_tokens=7)
    oracle = replay_oracle(traj)
    # round 1 drafts 1 2 (9 would be rejected) and emits 1 2 3; round 2 drafts 4 5 6, capped by the budget
    # (7 - 3 - 1), and emits 4 5 6 7.
    assert (oracle.rounds, oracle.drafted, oracle.accepted) == (2, 5, 5)
    fixed = replay(make_method("fixed:2"), traj)
    # 1 2 | bonus 3; 4 5 | bonus 6; budget leaves 0 drafts: 7
    assert (fixed.rounds, fixed.drafted, fixed.accepted, fixed.generated_tokens) == (3, 4, 4, 7)
    fixed3 = replay(make_method("fixed:3"), traj)
    assert (fixed3.rounds, fixed3.drafted, fixed3.accepted) == (2, 6, 5)  # 1 2 9x -> 3; 4 5 6 | bonus 7
    # an EOS the draft proposes ends the round after it, as in the engine, whose statistics count the last
    # emitted token as the target's (accepted = emitted - 1)
    ends = _hand_made([1, 2, 3], [1, 2, 3], max_new_tokens=8, eos={3})
    for stats in (replay_oracle(ends), replay(make_method("fixed:8"), ends)):
        assert (stats.rounds, stats.drafted, stats.accepted, stats.generated_tokens) == (1, 3, 2, 3)


def test_cost_model_fit_recovers_known_costs():
    truth = CostModel(0.1, 0.3, 0.01)
    records = []
    for drafted, rounds, prompt in ((40, 12, 100), (10, 30, 50), (64, 8, 300), (0, 50, 80)):
        stats = {"drafted": drafted, "rounds": rounds, "prompt_tokens": prompt}
        records.append({**stats, "wall_s": 0.1 * drafted + 0.3 * rounds + 0.01 * prompt})
    fitted = CostModel.fit(records)
    for got, want in ((fitted.per_drafted, truth.per_drafted), (fitted.per_round, truth.per_round),
                      (fitted.per_prompt_token, truth.per_prompt_token)):
        assert got == pytest.approx(want, rel=1e-9)
    with pytest.raises(SpecAdaptError, match="at least 3 measured generations"):
        CostModel.fit(records[:2])


def test_cost_model_fit_never_gives_a_negative_cost():
    # Noisy timings where plain least squares puts a negative cost on rounds (and so rewards more of them).
    records = [{"drafted": d, "rounds": r, "prompt_tokens": 10, "wall_s": w}
               for d, r, w in ((10, 10, 1.0), (20, 12, 2.1), (30, 30, 2.9), (40, 20, 4.2))]
    x = torch.tensor([[r["drafted"], r["rounds"], r["prompt_tokens"]] for r in records], dtype=torch.float64)
    plain = torch.linalg.lstsq(x, torch.tensor([[r["wall_s"]] for r in records], dtype=torch.float64)).solution
    assert bool((plain < 0).any())  # the case this guards against
    fitted = CostModel.fit(records)
    # the non-negative fit: drafted alone, sum(d * w) / sum(d^2) (scipy.optimize.nnls agrees)
    assert (fitted.per_drafted, fitted.per_round, fitted.per_prompt_token) == (pytest.approx(307 / 3000), 0.0, 0.0)


def test_bad_input(head):
    traj = _hand_made([1, 2], [1, 2], 8)
    with pytest.raises(SpecAdaptError, match="lossy"):
        replay(make_method("adasd"), traj)
    with pytest.raises(SpecAdaptError, match="drafts nothing"):
        replay(make_method("autoregressive"), traj)
    with pytest.raises(SpecAdaptError, match="needs the draft's hidden states"):
        replay(make_method(f"specdecpp:head={head}"), traj)
    with pytest.raises(SpecAdaptError, match="non-empty prompt and output"):
        make_trajectory(None, [1], [], 8)
