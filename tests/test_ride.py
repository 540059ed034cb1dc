"""Riding: in a batch, a greedy row goes on drafting past its policy's stop while another row still drafts
(``draft_round``'s ``ride``, ``SpeculativeEngine.batch(ride=...)``)."""

from dataclasses import dataclass, field

import pytest
import torch

from specadapt.engine import RequestConfig
from specadapt.methods import make_method
from specadapt.policies.base import DraftLengthPolicy, draft_round, finish_round

from conftest import hf_greedy, make_engine

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]


@dataclass
class Scripted(DraftLengthPolicy):
    """Row i wants ``wants[i]`` tokens (at most ``bound``); records what ``observe`` is told."""

    wants: list[int]
    bound: int = 6
    told: list = field(default_factory=list)

    def max_length(self, slots):
        return torch.full_like(slots, self.bound)

    def should_stop(self, step):
        return step.position >= torch.tensor(self.wants)

    def observe(self, outcome):
        self.told.append((outcome.drafted.tolist(), outcome.accepted.tolist(), outcome.accepted_mask.sum(1).tolist()))


def run(policy, ride, limit=(6, 6, 6), eos_at=None, looked_up=()):
    """A round over three rows; row i's token at step k is 10 * i + k (``eos_at``: (row, step) drafts EOS, id 99)."""
    slots = torch.arange(3)
    seen = []

    def propose(k, previous, drafting):
        seen.append(drafting.tolist())
        tokens = torch.tensor([10 * i + k for i in range(3)])
        if eos_at is not None and k == eos_at[1]:
            tokens[eos_at[0]] = 99
        return tokens, torch.full((3, 100), 0.01), None, k in looked_up

    block = draft_round(policy, slots, torch.tensor(limit), propose, lambda t: t == 99, True,
                        None if ride is None else torch.tensor(ride))
    return block, seen


def test_a_stopped_row_rides_while_another_drafts_and_the_policy_sees_its_own_stops():
    policy = Scripted([1, 4, 2])
    block, seen = run(policy, [True, True, True])
    assert block.K == 4  # the round ends when the policy stops its last row, riders or not
    assert block.lens.tolist() == [4, 4, 4]
    assert block.own_lens.tolist() == [1, 4, 2]
    assert block.tokens[0].tolist() == [1, 2, 3, 4]  # the rider's own tokens, not padding
    assert seen == [[True, True, True], [False, True, True], [False, True, False], [False, True, False]]
    finish_round(policy, torch.arange(3), block, torch.tensor([3, 2, 4]), torch.arange(4)[None] < torch.tensor([[3], [2], [4]]))
    assert policy.told == [([1, 4, 2], [1, 2, 2], [1, 2, 2])]  # accepted cut at the policy's own lengths


def test_only_rows_allowed_to_ride_ride():
    block, _ = run(Scripted([1, 4, 2]), [False, True, True])
    assert block.lens.tolist() == [1, 4, 4]
    assert block.tokens[0].tolist() == [1, 0, 0, 0]
    block, _ = run(Scripted([1, 4, 2]), None)
    assert block.lens.tolist() == [1, 4, 2] and block.own_lens is None


def test_eos_the_rows_room_and_a_looked_up_step_end_a_ride():
    block, _ = run(Scripted([1, 4, 1]), [True, True, True], eos_at=(0, 2))
    assert block.lens.tolist() == [2, 4, 4]  # row 0 drafted EOS at step 2: its ride ends with it
    block, _ = run(Scripted([1, 4, 1]), [True, True, True], limit=(2, 6, 3))
    assert block.lens.tolist() == [2, 4, 3]  # a ride stops at the row's room
    block, _ = run(Scripted([1, 4, 1]), [True, True, True], looked_up=(3,))
    assert block.lens.tolist() == [2, 4, 2]  # lookup proposes for the policy's rows only


def test_riding_never_lengthens_a_round():
    block, _ = run(Scripted([2, 2, 2]), [True, True, True])
    assert block.K == 2 and block.own_lens is None


# Policies whose rows stop at different lengths with these tiny models (the others stop every row alike here; every
# policy's batched greedy output is checked against the target's in test_engine_greedy.py, riding on by default).
@pytest.mark.parametrize("method", ["heuristic", "dynamic-confidence:min_each=2"])
def test_greedy_rows_ride_and_stay_the_targets_greedy_output(target, close_draft, method):
    engine = make_engine(target, close_draft)
    config = RequestConfig(max_new_tokens=24)
    results = {}
    for ride in (True, False):
        batch = engine.batch(make_method(method), ride=ride)
        requests = [batch.add(p, config) for p in PROMPTS]
        while batch.active:
            batch.step()
        results[ride] = [batch.result(r) for r in requests]
    for prompt, with_ride, without in zip(PROMPTS, results[True], results[False]):
        assert with_ride.token_ids == without.token_ids == hf_greedy(target, prompt, 24)
    drafted = {ride: sum(r.stats.drafted for r in results[ride]) for ride in results}
    assert drafted[True] > drafted[False]


def test_a_sampled_row_never_rides_so_its_seed_gives_the_same_sample_in_any_batch(target, close_draft):
    engine = make_engine(target, close_draft)
    greedy, sampled = RequestConfig(max_new_tokens=20), RequestConfig(max_new_tokens=20, temperature=1.0, seed=3)
    alone = engine.generate([PROMPTS[0]], make_method("adaedl"), sampled)[0]
    batch = engine.batch(make_method("adaedl"))
    requests = [batch.add(PROMPTS[0], sampled, seed=3), *(batch.add(p, greedy) for p in PROMPTS[1:])]
    while batch.active:
        batch.step()
    mixed = batch.result(requests[0])
    assert mixed.token_ids == alone.token_ids
    assert mixed.stats.drafted == alone.stats.drafted
