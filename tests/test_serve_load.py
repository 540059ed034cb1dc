"""The server's load rules: the auto rule's cost model (fake costs, no timing), and outputs under the rule."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from specadapt import SpecDecoder
from specadapt.engine import RequestConfig, RoundRecord
from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.serve import ServeSettings
from specadapt.load import MAX_DRAFT_TOKENS, MAX_PROBE_GAP, AcceptanceModel, AutoLoad, CostCurve, NoLoad, StaticLoad
from specadapt.serve.scheduler import Job, Scheduler

from conftest import perturbed_copy, save_tiny_checkpoint

WORDS = [f"w{i}" for i in range(62)]


def record(rows: int, K: int, accepted: int, target_width: int = 1, draft_width: int = 1) -> RoundRecord:
    return RoundRecord(rows, K, draft_width if K else 0, target_width, 0.0, 0.0, [K] * rows, [accepted] * rows)


def rows(B: int, room: int = 100, draft_behind: int = 1) -> list:
    return [SimpleNamespace(room=room, target_pending=[0], draft_pending=[0] * draft_behind, draft_unfed=False,
                            draft_reused=0)
            for _ in range(B)]


def trained(target, step, accepted=(3, 3, 1), K=3, batches=(1, 2, 4, 8)) -> AutoLoad:
    """A rule fed rounds whose costs come from ``target(positions)`` and ``step(rows)`` (seconds per draft step)."""
    rule = AutoLoad(margin=0.05, timing=lambda r: (r.K * step(r.rows), target(r.rows * (r.target_width + r.K))))
    for B in batches:
        for n in accepted:
            rule.observe(record(B, K, n))
        rule.observe(record(B, 0, 0))
    return rule


def test_auto_rule_drafts_at_small_batches_and_stops_when_target_cost_per_token_makes_drafting_lose():
    # A target pass costs the same up to 4 positions, then grows with them (compute-bound); draft steps are cheap.
    rule = trained(lambda x: 1.0 if x <= 4 else x / 4, lambda b: 0.05)
    assert rule.decide(rows(1), bound=3) is None  # drafting the policy's full 3 pays alone
    assert rule.decide(rows(4), bound=3) == 0  # 4 rows x 4 positions cost 4x a target-only round: target-only
    assert rule.decide(rows(8), bound=3) == 0
    rates = rule.rates(1, 1, 1, 100.0, 3)
    assert rates[3] > rates[0] * 1.05


def test_auto_rule_decides_without_the_policys_bound_too():
    # A batch whose rounds so far only prefilled has no bound from its policy yet; a measured rule still caps it
    # (it used to answer None, and the round drafted as far as the policy went: 32 steps over 8 rows).
    rule = trained(lambda x: 1.0 if x <= 4 else x / 4, lambda b: 0.05)
    assert rule.decide(rows(8), bound=None) == 0
    assert rule.decide(rows(1), bound=None) == 3  # alone it drafts: 3 of the lengths up to 64 (the pass grows past 4)
    assert AutoLoad().decide(rows(8), bound=None) is None  # nothing measured yet: no cap (the engine caps such rounds)


def test_auto_rule_picks_the_cap_in_between_when_later_positions_rarely_pay():
    # Position 1 is nearly always accepted, position 3 rarely: each position costs 0.05 s (target) + 0.1 s (draft).
    rule = trained(lambda x: 1.0 + 0.05 * x, lambda b: 0.1, accepted=(3, 2, 2, 1, 1, 1, 1, 1, 1, 0))
    E = rule.acceptance.expected_tokens
    assert E(1) == pytest.approx(1.9, rel=0.01) and E(2) == pytest.approx(1.9 + 0.9 * 3 / 9, rel=0.01)  # recent rounds weigh more
    assert rule.decide(rows(1), bound=3) == 2


def test_auto_rule_can_leave_a_lone_request_to_a_policy_that_prices_its_own_drafts_but_not_a_batch():
    # The same costs and acceptance as the test above (the rule's best cap: 2 of the policy's 3).
    rule = trained(lambda x: 1.0 + 0.05 * x, lambda b: 0.1, accepted=(3, 2, 2, 1, 1, 1, 1, 1, 1, 0))
    assert rule.decide(rows(1), bound=3, priced=True) == 2  # by default the rule caps it as any other
    rule.defer = True  # --spec-auto-defer
    assert rule.decide(rows(1), bound=3, priced=True) is None  # marginal:cost=auto alone: its own length
    assert rule.decide(rows(1), bound=3) == 2  # a policy that does not price its drafts: capped
    assert rule.decide(rows(2), bound=3, priced=True) == 1  # a batch (dearer: cap 1): a row's steps hold up the others
    # Drafting loses at any length: the rule keeps the lone request target-only, priced or not.
    rule = trained(lambda x: 0.1 * x, lambda b: 0.05)
    rule.defer = True
    assert rule.decide(rows(1), bound=3, priced=True) == 0
    assert not ServeSettings().load_rule().defer and ServeSettings(spec_auto_defer=True).load_rule().defer


def test_auto_rule_target_only_when_drafting_costs_more_than_it_saves_at_any_batch():
    rule = trained(lambda x: 0.1 * x, lambda b: 0.05)  # cost per position constant: a rejected draft is pure loss
    assert [rule.decide(rows(B), bound=3) for B in (1, 2, 4, 8)] == [0, 0, 0, 0]


def test_auto_rule_assumes_an_unmeasured_batch_size_costs_a_draft_step_at_least_in_proportion_to_it():
    # Measured at batch 1 only: a flat target (1 s) and a draft step of 0.3 s, for which drafting pays alone.
    # Scaled along the flat target, a step at batch 8 would look as cheap; priced in proportion to 8 rows
    # (as a quantized draft's step can grow) it loses. Between the two, the rule measures: one probe round.
    rule = trained(lambda x: 1.0, lambda b: 0.3 * b, batches=(1,))
    assert rule.decide(rows(1), bound=3) is None
    assert rule.step_cost(8) == pytest.approx(2.4) and rule.step_cost(8, low=True) == pytest.approx(0.3)
    assert rule.decide(rows(8), bound=3) == 1 and rule.probes == 1
    rule.observe(record(8, 1, 1))  # the probe: a step at batch 8 really costs 2.4 s
    assert rule.step_cost(8) == pytest.approx(2.4) and rule.decide(rows(8), bound=3) == 0 and rule.probes == 1
    cheap = trained(lambda x: 1.0, lambda b: 0.3, batches=(1,))
    cheap.decide(rows(8), bound=3)
    cheap.observe(record(8, 1, 1))  # here it costs what it did alone: drafting
    assert cheap.decide(rows(8), bound=3) is None
    costly = trained(lambda x: 1.0, lambda b: 3.0, batches=(1,))  # loses even alone: no probe at 8 either
    assert costly.decide(rows(1), bound=3) == 0 and costly.decide(rows(8), bound=3) == 0 and costly.probes == 0


def test_auto_rule_prices_feeding_the_draft_prompts_it_has_not_seen():
    rule = trained(lambda x: 1.0 if x <= 4 else x / 4, lambda b: 0.05)
    joined = rows(1, room=4)
    assert rule.decide(joined, bound=3) is None
    joined[0].draft_unfed, joined[0].draft_pending = True, [0] * 400  # a 400-token prompt the draft never saw
    assert rule.decide(joined, bound=3) == 0  # feeding it costs more than drafting saves in 4 tokens
    joined[0].room = 2000
    assert rule.decide(joined, bound=3) is None  # paid back over the rest


def test_auto_rule_drafts_in_a_round_over_fresh_prompts_only_if_plain_rounds_would_draft():
    """A fresh batch's first round feeds both models its prompts. Its target-only rate is poor (one token per row
    in a long pass), so judged by tokens per second drafting would always win there, and the draft would be fed
    its prompts for one round's worth of drafts. Here a target pass costs a step per position up to 16 positions
    and little more per position beyond (a CPU without native bf16, wide blocks in float32)."""
    def avx2_like(x: int) -> float:
        return 1.0 + 0.4 * (x - 1) if x <= 16 else 7.0 + 0.05 * x
    fresh = [SimpleNamespace(room=100, target_pending=[0] * 60, draft_pending=[0] * 60, draft_unfed=True, draft_reused=0)]
    def rule(step: float) -> AutoLoad:
        rule = trained(avx2_like, lambda b: step, batches=(1,))
        for width in (60, 64):  # prompts seen before
            rule.observe(record(1, 0, 0, target_width=width))
        return rule

    slow = rule(0.6)  # a draft step of 0.6 target steps: plain rounds do not draft
    assert slow.decide(rows(1), bound=3) == 0
    rates = slow.rates(1, 60, 0, 100, 3, [60])
    assert max(rates[1:]) > 1.5 * rates[0]  # what a comparison of this round's rates alone would choose
    assert slow.decide(fresh, bound=3) == 0  # but it would feed the draft 60 tokens for ~2 more tokens
    fast = rule(0.05)  # a cheap draft: plain rounds draft, so feed it now
    assert fast.decide(rows(1), bound=3) is None and fast.decide(fresh, bound=3) is None


def test_auto_rule_prices_feeding_the_draft_a_prompt_as_measured():
    """Until a draft catch-up is measured, a prompt is priced like draft steps (here 0.05 of the target's pass);
    once a fill took 0.125 s a token (half the target's pass over 400 tokens), the same request stays target-only."""
    rule = trained(lambda x: 1.0 if x <= 4 else x / 4, lambda b: 0.05)
    joined = rows(1, room=20)
    joined[0].draft_unfed, joined[0].draft_pending = True, [0] * 400
    assert rule.fill_per_token is None and rule.decide(joined, bound=3) is None
    rule.observe(RoundRecord(1, 0, 0, 1, 0.0, 0.0, [0], [0], prefill_s=50.0, draft_fill_tokens=400, draft_fill_s=50.0))
    assert rule.fill_per_token == pytest.approx(0.125) and rule.summary()["draft_fill_s_per_token"] == pytest.approx(0.125)
    assert rule.decide(joined, bound=3) == 0


def test_auto_rule_prices_a_prompt_by_its_tokens_not_by_the_targets_extrapolated_curve():
    """The target's curve is learned on rounds of a few positions; a measured fill prices a prompt per token, so
    however steeply the curve would extrapolate to the prompt's length, the price stays what fills cost."""
    def steep(x: int) -> float:  # flat up to 8 positions, then steeper and steeper
        return 1.0 if x <= 8 else 1.0 + 0.01 * (x - 8) ** 2
    rule = trained(steep, lambda b: 0.05)
    rule.observe(RoundRecord(1, 0, 0, 1, 0.0, 0.0, [0], [0], prefill_s=0.5, draft_fill_tokens=100, draft_fill_s=0.5))
    joined = rows(1, room=400)
    joined[0].draft_unfed, joined[0].draft_pending = True, [0] * 400
    unfed_price = rule.rates(1, 1, 0, 400, 3, [400])[1]
    assert unfed_price == pytest.approx(rule.rates(1, 1, 0, 400, 3, [])[1], rel=0.05)  # 2 s over ~100 rounds
    assert rule.decide(joined, bound=3) is None


def test_auto_rule_prices_later_draft_steps_apart_from_the_first_forward():
    """At 8 rows a round's first draft forward feeds two tokens a row and costs several later steps. Booked as one
    step, a round of three looks 3 x 0.3 s and the rule keeps one token a round; with the first forward and the
    later steps measured apart (the later ones at 4 rows, scaled to 8 by the first forwards' ratio), three pay."""
    def target(x: int) -> float:  # an 8-row pass over one token a row costs 1 s, each further token a row 0.25 s
        return 1.0 + 0.25 * max(0, x - 8) / 8

    def trained_rule(timed: bool) -> AutoLoad:
        rule = AutoLoad(timing=lambda r: (r.draft_s, target(r.rows * (r.target_width + r.K))))
        for _ in range(5):
            for B, K, first, later in ((4, 3, 0.15, 0.025), (8, 1, 0.3, 0.0)):
                rule.observe(RoundRecord(B, K, 2, 1, first + later * (K - 1), 0.0, [K] * B, [K] * B,
                                         draft_first_s=first if timed else 0.0))
            for width in (1, 2, 3, 4):  # target passes over 8 to 32 positions
                rule.observe(RoundRecord(8, 0, 0, width, 0.0, 0.0, [0] * 8, [0] * 8))
        rule.acceptance = AcceptanceModel()  # per position: 0.8, then 0.75, 0.75 (E = 1.8, 2.4, 2.85 tokens a row)
        rule.acceptance.add([3] * 40, [0] * 8 + [1] * 8 + [2] * 6 + [3] * 18)
        return rule

    untimed, timed = trained_rule(False), trained_rule(True)
    assert untimed.draft_cost(8, 3) == pytest.approx(0.9) and timed.draft_cost(8, 3) == pytest.approx(0.4)
    assert untimed.decide(rows(8), bound=3) == 1  # 14.4 tokens in 1.55 s; three: 22.8 in 1.75 + 0.9 s
    assert timed.decide(rows(8), bound=3) is None  # three, the policy's bound: 22.8 tokens in 1.75 + 0.4 s
    assert timed.summary()["draft_later_s"] == {4: pytest.approx(0.025)}


def test_auto_rule_does_not_catch_the_draft_up_for_a_request_about_to_end():
    rule = trained(lambda x: 1.0 if x <= 4 else x / 4, lambda b: 0.05)
    assert rule.decide(rows(1, room=2000, draft_behind=400), bound=3) is None  # paid back over the rest
    assert rule.decide(rows(1, room=4, draft_behind=400), bound=3) == 0  # 400 tokens of catch-up for 3 more tokens


def test_auto_rule_does_not_cap_before_it_has_measured_drafting():
    rule = AutoLoad(timing=lambda r: (0.1, 1.0))
    assert rule.decide(rows(4), bound=3) is None
    rule.observe(record(4, 0, 0))
    assert rule.decide(rows(4), bound=3) is None  # target measured, drafting not yet
    rule.observe(record(4, 3, 2, draft_width=12))  # a catch-up round: no clean draft-step cost
    assert rule.decide(rows(4), bound=3) is None
    rule.observe(record(4, 3, 2))
    assert rule.decide(rows(4), bound=3) is not None or rule.draft_step  # now it decides
    # the policy's bound unknown: the rule decides over every length a round may draft
    assert rule.decide(rows(4), bound=None) == rule.decide(rows(4), bound=MAX_DRAFT_TOKENS) == 2


def flat_then_linear(x: int) -> float:
    """A target pass: the same cost up to 4 positions, then growing with them (drafting pays for one request)."""
    return 1.0 if x <= 4 else x / 4


def serve(rule: AutoLoad, B: int, rounds: int, state: dict, bound: int = 3, accepted: int = 2) -> list:
    """Run ``rounds`` rounds of B requests under ``rule`` (its timing is the fake cost model) and return the caps.
    The draft's backlog (``state["behind"]``) grows by one per target-only round and is back to one or two after a
    drafting round, as in the engine; each row accepts ``accepted`` of its drafts."""
    caps = []
    for _ in range(rounds):
        cap = rule.decide(rows(B, draft_behind=state["behind"]), bound)
        caps.append(cap)
        K = bound if cap is None else cap
        n = min(accepted, K)
        rule.observe(record(B, K, n, draft_width=state["behind"]))
        state["behind"] = state["behind"] + 1 if K == 0 else 2 if n == K else 1
    return caps


def test_auto_rule_probes_a_batch_size_a_spike_locked_out_and_drafts_again_when_costs_are_normal():
    costs = {"step": 5.0}  # the first draft steps measured are 100x slow (a transient load spike, a warm-up)
    rule = AutoLoad(timing=lambda r: (r.K * costs["step"], flat_then_linear(r.rows * (r.target_width + r.K))))
    N = rule.probe_every
    assert N == 32
    state = {"behind": 1}
    assert serve(rule, 1, 1, state) == [None]  # nothing measured yet: uncapped; books the spiked step
    costs["step"] = 0.05  # the spike is over
    assert rule.step_cost(1) == 5.0 and rule.decide(rows(1), 3) == 0  # drafting looks like a loss
    caps = serve(rule, 1, N + 12, state)
    # N target-only rounds (the draft falls N tokens behind), then a probe: the first catches the draft up (not
    # booked as a step), the second is plain and re-measures; the fresh cost mostly replaces the stale one.
    assert caps[:N] == [0] * N and caps[N:N + 2] == [1, 1] and rule.probes == 2
    assert all(cap != 0 for cap in caps[N + 2:]) and caps[-1] == 2  # drafting again (position 3 never pays here)
    assert 0.05 < rule.step_cost(1) < 0.1  # from 5.0, and still converging on 0.05
    # A later spike while drafting: the rule turns drafting off, and the next probe turns it back on.
    costs["step"] = 50.0
    caps = serve(rule, 1, 1, state)
    costs["step"] = 0.05
    caps = serve(rule, 1, N + 6, state)
    assert caps[:N] == [0] * N and caps[N:N + 2] == [1, 1] and caps[-1] == 2 and rule.probes == 4


def test_auto_rule_does_not_probe_while_drafting_when_the_draft_is_far_behind_or_when_measured_recently():
    rule = trained(flat_then_linear, lambda b: 0.05)  # drafting pays at 1 request, loses from 4 on
    N = rule.probe_every
    for _ in range(3 * N):  # many rounds at 4 requests: the estimate at 1 request grows stale
        rule.observe(record(4, 0, 0))
    assert rule.decide(rows(1), bound=3) is None and rule.probes == 0  # drafting is on: no probe (it measures itself)
    rule = trained(flat_then_linear, lambda b: 0.05)
    measured = rule.measured_at[4]
    for _ in range(N - 1 - (rule.rounds - measured)):
        rule.observe(record(4, 0, 0))
    assert rule.decide(rows(4, draft_behind=N + 1), bound=3) == 0  # measured N - 1 rounds ago: no probe yet
    rule.observe(record(4, 0, 0))
    assert rule.decide(rows(4, draft_behind=N + 3), bound=3) == 0  # due, but a long catch-up: no probe
    assert rule.probes == 0
    assert rule.decide(rows(4, draft_behind=N + 2), bound=3) == 1  # due, the draft N rounds behind: probe
    # Where drafting really loses, a probe confirms it: two rounds (a catch-up, then a plain one that measures). Each
    # confirmation doubles the rounds until the next probe there, up to MAX_PROBE_GAP * N; the draft, now over N
    # tokens behind, is too far for a cheap probe, so only a request that is not (a newcomer's short prompt) gets one.
    state = {"behind": N + 2}
    caps = serve(rule, 4, 2 * N, state)
    assert [i for i, cap in enumerate(caps) if cap] == [0, 1] and rule.summary()["probe_gap"] == {4: 2 * N}
    assert rule.step_cost(4) == pytest.approx(0.05)
    for gap in (2 * N, 4 * N, 8 * N, 8 * N):
        assert rule.decide(rows(4, draft_behind=2), bound=3) == 0  # not yet due (and the last probe judged)
        assert rule.probe_gap[4] == gap
        for _ in range(gap):
            rule.observe(record(4, 0, 0))
        assert rule.decide(rows(4, draft_behind=N + 3), bound=3) == 0  # due, but a long catch-up: no probe
        assert rule.decide(rows(4, draft_behind=2), bound=3) == 1
        rule.observe(record(4, 1, 1))  # the probe measures a step: drafting still loses
    assert rule.decide(rows(4, draft_behind=2), bound=3) == 0 and rule.probe_gap[4] == MAX_PROBE_GAP * N
    cheap = AutoLoad(timing=lambda r: (r.K * 0.05, 1.0))  # drafting pays at any size: a drafting round resets it
    cheap.observe(record(4, 3, 2))
    cheap.probe_gap[4] = 4 * N
    assert cheap.decide(rows(4), bound=3) == 2 and 4 not in cheap.probe_gap  # (position 3 was never accepted)
    never = AutoLoad(probe_every=0, timing=rule.timing)  # 0: never probes
    for B in (1, 4):
        never.observe(record(B, 3, 2))
    for _ in range(3 * N):
        never.observe(record(4, 0, 0))
    assert never.decide(rows(4, draft_behind=2), bound=3) == 0 and never.probes == 0


def test_the_rule_counts_on_requests_stopping_their_own_drafts_while_the_batch_runs_the_longest():
    # An early-stopping policy (as AdaEDL): of 8 requests, 7 draft one token and one drafts 6, all accepted.
    model = AcceptanceModel()
    model.add([1] * 7 + [6], [1] * 7 + [6])
    assert model.expected_tokens(6) == pytest.approx(1 + 1 + 5 / 8)  # positions 2-6: only 1 request in 8 gets there
    assert model.expected_steps(6, 8) == pytest.approx(1 + 5 * (1 - (7 / 8) ** 8))  # but someone usually does
    assert model.expected_steps(6, 1) == pytest.approx(1 + 5 / 8)
    rule = AutoLoad(timing=lambda r: (0.1 * r.K, 0.5 + 0.01 * r.rows * (r.target_width + r.K)))
    for _ in range(5):
        rule.observe(RoundRecord(8, 6, 1, 1, 0.0, 0.0, [1] * 7 + [6], [1] * 7 + [6]))
        rule.observe(record(8, 0, 0))
    # Cap 1: 2 tokens a request for one step; cap 6: 2.6 tokens for ~4.3 steps, and the target pass over them.
    assert rule.decide(rows(8), bound=6) == 1


def test_cost_curve_and_acceptance_model():
    curve = CostCurve()
    curve.add(2, 1.0)
    assert curve(1) == curve(50) == 1.0  # one point: flat
    curve.add(6, 3.0)
    assert curve(4) == pytest.approx(2.0) and curve(10) == pytest.approx(5.0) and curve(1) == pytest.approx(0.5)
    model = AcceptanceModel()
    model.add([4, 4], [4, 0])  # position 1: 1 of 2 accepted; positions 2-4: 1 of 1
    assert model.expected_tokens(0) == 1 and model.expected_tokens(2) == pytest.approx(1 + 0.5 + 0.5)
    assert StaticLoad(2, 1).decide(rows(3), 4) == 1 and StaticLoad(2, 1).decide(rows(2), 4) is None
    assert NoLoad().decide(rows(8), 4) is None
    aging = CostCurve(half_life=2)
    for now in range(1, 6):
        aging.add(1, 1.0, now)
    aging.add(1, 6.0, 6)  # the next round: averaged in with weight 0.2
    assert aging(1) == pytest.approx(2.0)
    aging.add(1, 1.0, 16)  # 9 rounds unmeasured: the old average keeps 0.8 * 2 ** -4.5 of its weight
    assert aging(1) == pytest.approx(1.0 + 0.8 * 2 ** -4.5 * 1.0)


def test_settings_validate_the_load_rule():
    assert isinstance(ServeSettings().load_rule(), AutoLoad)
    assert isinstance(ServeSettings(spec_load="static", spec_max_batch=2).load_rule(), StaticLoad)
    assert ServeSettings().load_rule().probe_every == 32 and ServeSettings(spec_auto_probe_every=0).load_rule().probe_every == 0
    for bad, message in [({"spec_load": "sometimes"}, "spec_load must be one of auto, static, off, got 'sometimes'."),
                         ({"spec_auto_margin": 1.5}, "spec_auto_margin must be in [0, 1) (a fraction), got 1.5."),
                         ({"spec_auto_window": 0}, "spec_auto_window must be >= 1, got 0."),
                         ({"spec_auto_probe_every": -1}, "spec_auto_probe_every must be >= 0 (0: never probe), got -1.")]:
        with pytest.raises(SpecAdaptError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            ServeSettings(**bad)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> SpecDecoder:
    root = tmp_path_factory.mktemp("serve_load")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    loaded = SpecDecoder.from_pretrained(str(root / "target"), None, dtype="float32", device="cpu")
    return SpecDecoder(loaded.target, loaded.tokenizer, perturbed_copy(loaded.target, 0.3), names=("tiny", "draft"))


def test_outputs_under_the_auto_rule_equal_generate_and_the_cap_follows_the_batch_size(decoder):
    # Fake costs: a target pass is flat up to 4 positions, then grows with them; so drafting pays for one
    # request and loses from three on. Requests of different lengths: the batch shrinks from 5 to 1.
    rule = AutoLoad(timing=lambda r: (0.01 * r.K, 1.0 if r.rows * (r.target_width + r.K) <= 4
                                      else r.rows * (r.target_width + r.K) - 3.0))
    method = "fixed:3"
    scheduler = Scheduler(decoder.engine, make_method(method), max_batch_size=8, load_rule=rule)
    asks = [("w1 w2 w3", 40, {}), ("w9", 8, {"temperature": 0.9, "seed": 3}), ("w4 w5 w6", 12, {}),
            ("w11 w12", 16, {"temperature": 0.7, "top_p": 0.8, "seed": 5}), ("w30", 20, {})]
    results, done = {}, threading.Event()

    def on_event(i):
        def handle(kind, payload):
            if kind in ("done", "error"):
                results[i] = (kind, payload)
                if len(results) == len(asks):
                    done.set()
        return handle

    for i, (prompt, n, sampling) in enumerate(asks):  # queued before the worker starts: all join round 1
        scheduler.submit(Job(decoder.encode(prompt), RequestConfig(n, **sampling), on_event(i), seed=sampling.get("seed")))
    scheduler.start()
    assert done.wait(60)
    scheduler.stop()
    for i, (prompt, n, sampling) in enumerate(asks):
        kind, payload = results[i]
        assert kind == "done"
        alone = decoder.engine.generate([decoder.encode(prompt)], make_method(method), RequestConfig(n, **sampling))[0]
        if sampling:  # exact in distribution; which sample a seed gives depends on the draft lengths (as with any method)
            assert len(payload.result.token_ids) == n
        else:
            assert payload.result.token_ids == alone.token_ids, i  # greedy: token-identical whatever the caps
    caps = list(zip(scheduler.batch_sizes, scheduler.caps))
    assert any(B >= 3 and cap == 0 for B, cap in caps)  # target-only rounds under load
    assert any(B == 1 and cap != 0 for B, cap in caps)  # drafting again once alone
    assert results[0][1].result.stats.drafted > 0 and results[0][1].load_capped_rounds > 0


def test_the_load_rule_sees_a_joining_prompt_already_prefilled(decoder):
    """A request joining a running batch is prefilled before the rule decides, so the round it prices feeds the
    target one token of the new row (not its whole prompt); the draft is fed the prompt apart when it drafts, and
    both prefills are booked apart from the round's passes."""

    class Spy(NoLoad):
        def __init__(self) -> None:
            self.seen: list[tuple[int, int, list[bool]]] = []  # rows, widest target_pending, draft_unfed per row
            self.records: list[RoundRecord] = []

        def decide(self, rows, bound, priced=False):
            self.seen.append((len(rows), max(len(r.target_pending) for r in rows), [r.draft_unfed for r in rows]))
            return None

        def observe(self, record):
            self.records.append(record)

    spy = Spy()
    scheduler = Scheduler(decoder.engine, make_method("fixed:3"), max_batch_size=4, load_rule=spy)
    done = threading.Event()
    first = Job(decoder.encode("w1 w2"), RequestConfig(60), lambda kind, _p: None)
    long_prompt = decoder.encode(" ".join(WORDS[:40]))
    late = Job(long_prompt, RequestConfig(12), lambda kind, _p: kind in ("done", "error") and done.set())
    scheduler.submit(first)
    scheduler.start()
    while scheduler.rounds < 3:
        threading.Event().wait(0.01)
    scheduler.submit(late)
    assert done.wait(60)
    scheduler.stop()
    joined = next(i for i, (B, _, _) in enumerate(spy.seen) if B == 2)
    # the target has the new prompt but its last token; the draft has seen nothing of it yet (it is fed when drafted for)
    assert spy.seen[joined][1] <= 2 and spy.seen[joined][2] == [False, True]
    assert spy.seen[joined + 1][2] == [False, False]  # this round drafted: the draft was fed the prompt apart
    record = spy.records[joined]
    assert record.target_width <= 2 and record.draft_width <= 2 and record.prefill_s > 0
    assert all(r.prefill_s == 0 for i, r in enumerate(spy.records) if i != joined)


def test_serve_load_ratio_is_pooled_over_repeats_with_each_repeat_kept():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("serve_load", Path(__file__).resolve().parent.parent / "benchmarks" / "serve_load.py")
    serve_load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(serve_load)
    rows = [{"method": m, "concurrency": c, "repeat": r, "output_tokens_per_s": v} for m, c, r, v in [
        ("autoregressive", 1, 0, 4.0), ("autoregressive", 1, 1, 6.0), ("adaedl", 1, 0, 8.0), ("adaedl", 1, 1, 9.0),
        ("autoregressive", 4, 0, 10.0), ("adaedl", 4, 0, 9.0)]]
    ratios = serve_load.throughput_ratios(rows, ["autoregressive", "adaedl"])
    assert ratios == {"adaedl": {1: {"ratio": 17 / 10, "per_repeat": [2.0, 1.5]}, 4: {"ratio": 0.9, "per_repeat": [0.9]}}}


def test_the_scheduler_tells_the_rule_whether_the_policy_prices_its_own_drafts(decoder):
    seen = {}

    class Spy(NoLoad):
        def decide(self, rows, bound, priced=False):
            seen.setdefault(method, set()).add(priced)
            return None

    for method in ("marginal:cost=auto", "marginal", "fixed:3"):
        scheduler = Scheduler(decoder.engine, make_method(method), max_batch_size=2, load_rule=Spy())
        done = threading.Event()
        scheduler.submit(Job(decoder.encode("w1 w2"), RequestConfig(6), lambda kind, _p: kind in ("done", "error") and done.set()))
        scheduler.start()
        assert done.wait(60)
        scheduler.stop()
    assert seen == {"marginal:cost=auto": {True}, "marginal": {False}, "fixed:3": {False}}
