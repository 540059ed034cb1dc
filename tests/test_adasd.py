"""AdaSD: entropy stopping (adasd-stop, lossless) and the JS acceptance rule (adasd, lossy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy as scipy_entropy

from specadapt.acceptance import Proposal
from specadapt.engine import RequestConfig
from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.policies import DraftStep
from specadapt.sampling import SamplingParams, js_distance, process_logits

from conftest import make_engine, play_round as drive_round
from test_losslessness import ALPHA, PROMPT, SAMPLING, exact_joint, run_checks

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]




def play_round(policy, rows, q, p, accepted, drafted=None, clip=False):
    """One round through the round protocol: row j drafts argmax tokens of q[j] (at most drafted[j]); the JS
    distances observe() reads are those of p and q, as the acceptance rule would hand them over."""
    scores = (lambda block: {"js_distance": js_distance(p[:, :block.K], q[:, :block.K])}) if policy.reads_scores else None
    return drive_round(policy, rows, q, accepted, drafted, q.argmax(-1), token_scores=scores, clip=clip)


def statistics(policy, slots):
    """The policy's per-request counts and thresholds, through its public methods."""
    state = policy._state
    index = state.index(slots)
    return {"n_acc": state["n_acc"][index], "n_rej": state["n_rej"][index], "T_G": policy.stop_threshold(slots),
            "T_V": policy.js_threshold(slots), "warm": policy.warm(slots)}


def random_dists(seed, *shape):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * 2).softmax(-1)


def H(q):
    return float(scipy_entropy(q.double().numpy()))


def JS(p, q):
    return float(jensenshannon(p.double().numpy(), q.double().numpy(), base=2))


# --- statistics follow the formulas ------------------------------------------------------------


@pytest.mark.parametrize("first_only", [True, False])
def test_thresholds_follow_the_formulas(first_only):
    policy = make_method(f"adasd:n_min=1,first_rejection_only={first_only}").policy
    policy.begin(torch.arange(2))
    rows = torch.tensor([1, 0])  # batch order differs from the slot order
    K, Vq = 4, 6
    # (accepted per row, drafted per row) for three rounds
    script = [([1, 4], [4, 4]), ([0, 2], [3, 4]), ([2, 3], [4, 3])]
    acc_d = {0: [], 1: []}
    rej_d = {0: [], 1: []}
    rej_h = {0: [], 1: []}
    for r, (accepted, drafted) in enumerate(script):
        q = random_dists(10 + r, 2, K, Vq)
        p = random_dists(20 + r, 2, K + 1, Vq)
        lens = play_round(policy, rows, q, p, accepted, drafted, clip=True).lens.tolist()
        for j, row in enumerate(rows.tolist()):
            m = lens[j]  # < drafted[j] where the entropy stop ended the row early
            n = min(accepted[j], m)
            for i in range(m):
                if i < n:
                    acc_d[row].append(JS(p[j, i], q[j, i]))
                elif i == n or not first_only:
                    rej_d[row].append(JS(p[j, i], q[j, i]))
                    rej_h[row].append(H(q[j, i]))
    stats = statistics(policy, torch.tensor([0, 1]))
    for row in (0, 1):
        assert stats["n_acc"][row] == len(acc_d[row])
        assert stats["n_rej"][row] == len(rej_h[row])
        assert stats["T_G"][row].item() == pytest.approx(np.mean(rej_h[row]), rel=1e-5)
        assert stats["T_V"][row].item() == pytest.approx((np.mean(acc_d[row]) + np.mean(rej_d[row])) / 2, rel=1e-5)


def test_shared_scope_pools_rows_and_survives_reset():
    policy = make_method("adasd:n_min=1,scope=shared").policy
    rows = torch.tensor([0, 1])
    policy.begin(rows)
    q, p = random_dists(1, 2, 3, 5), random_dists(2, 2, 4, 5)
    play_round(policy, rows, q, p, [1, 2])
    expected_tg = np.mean([H(q[0, 1]), H(q[1, 2])])
    expected_tv = (np.mean([JS(p[0, 0], q[0, 0]), JS(p[1, 0], q[1, 0]), JS(p[1, 1], q[1, 1])])
                   + np.mean([JS(p[0, 1], q[0, 1]), JS(p[1, 2], q[1, 2])])) / 2
    for _ in range(2):  # new requests keep the shared statistics
        stats = statistics(policy, torch.tensor([0, 1]))
        assert stats["T_G"].tolist() == pytest.approx([expected_tg] * 2, rel=1e-5)
        assert stats["T_V"].tolist() == pytest.approx([expected_tv] * 2, rel=1e-5)
        policy.begin(torch.arange(3))
    request = make_method("adasd:n_min=1,scope=request").policy
    request.begin(rows)
    play_round(request, rows, q, p, [1, 2])
    request.begin(rows)
    assert statistics(request, rows)["n_rej"].tolist() == [0, 0]


def test_prior_scope_starts_requests_from_the_pooled_means():
    policy = make_method("adasd:n_min=2,scope=prior").policy
    rows = torch.tensor([0, 1])
    policy.begin(rows)
    assert not statistics(policy, rows)["warm"].any()  # nothing pooled yet: cold like scope "request"
    q, p = random_dists(5, 2, 3, 5), random_dists(6, 2, 4, 5)
    play_round(policy, rows, q, p, [1, 2])  # row 0: q[0,0] accepted, q[0,1] rejected; row 1: 2 accepted, q[1,2] rejected
    h_rej = [H(q[0, 1]), H(q[1, 2])]
    d_acc = [JS(p[0, 0], q[0, 0]), JS(p[1, 0], q[1, 0]), JS(p[1, 1], q[1, 1])]
    d_rej = [JS(p[0, 1], q[0, 1]), JS(p[1, 2], q[1, 2])]
    # the running requests keep their own statistics (one rejection each: still cold at n_min = 2)
    assert statistics(policy, rows)["n_rej"].tolist() == [1, 1]
    assert not statistics(policy, rows)["warm"].any()
    # a new request starts warm from the pool's means, worth n_min observations of each kind
    new = torch.tensor([2])
    policy.begin(new)
    stats = statistics(policy, new)
    assert stats["warm"].item() and stats["n_acc"].item() == 2 and stats["n_rej"].item() == 2
    assert stats["T_G"].item() == pytest.approx(np.mean(h_rej), rel=1e-5)
    assert stats["T_V"].item() == pytest.approx((np.mean(d_acc) + np.mean(d_rej)) / 2, rel=1e-5)
    # its own observations are added to the prior: one more rejection weighs 1 against the prior's 2
    q2, p2 = random_dists(7, 1, 1, 5), random_dists(8, 1, 2, 5)
    play_round(policy, new, q2, p2, [0])
    assert statistics(policy, new)["T_G"].item() == pytest.approx((2 * np.mean(h_rej) + H(q2[0, 0])) / 3, rel=1e-5)
    # a slot taken again starts from the pool, which now holds the new request's observation too
    policy.begin(rows[:1])
    assert statistics(policy, rows[:1])["T_G"].item() == pytest.approx(np.mean(h_rej + [H(q2[0, 0])]), rel=1e-5)


def test_entropy_stop_uses_t_g_and_keeps_the_trigger():
    policy = make_method("adasd-stop:n_min=1").policy
    rows = torch.tensor([0])
    policy.begin(rows)
    q = random_dists(3, 1, 2, 6)
    play_round(policy, rows, q, None, [1])  # q[0, 1] is the rejected token
    t_g = H(q[0, 1])
    assert statistics(policy, rows)["T_G"].item() == pytest.approx(t_g, rel=1e-5)
    assert policy.max_length(rows).item() == 32
    peaky = torch.tensor([[0.97, 0.01, 0.01, 0.01, 0.0, 0.0]])
    flat = torch.full((1, 6), 1 / 6)
    assert H(peaky[0]) < t_g < H(flat[0])
    step = lambda k, probs: DraftStep(k, probs.argmax(-1), probs, None, rows, torch.tensor([True]))
    assert not policy.should_stop(step(1, peaky)).item()
    assert policy.should_stop(step(2, flat)).item()  # stop after drafting the high-entropy token


def test_cold_start():
    policy = make_method("adasd:n_min=2,cold_start_k=3").policy
    rows = torch.tensor([0])
    policy.begin(rows)
    flat = torch.full((1, 1, 6), 1 / 6)
    q, p = flat.expand(1, 3, 6).clone(), random_dists(4, 1, 4, 6)
    # cold: capped at cold_start_k, no entropy stop even on a uniform draft
    assert policy.max_length(rows).item() == 3
    assert play_round(policy, rows, q, p, [2], drafted=[5]).lens.tolist() == [3]  # 2 accepted, 1 rejected
    stats = statistics(policy, rows)
    assert not stats["warm"].item() and stats["T_G"].item() == math.inf and stats["T_V"].item() == -math.inf
    assert policy.max_length(rows).item() == 3
    play_round(policy, rows, q, p, [0])  # second rejection: 2 of each kind
    stats = statistics(policy, rows)
    assert stats["warm"].item() and math.isfinite(stats["T_G"].item()) and math.isfinite(stats["T_V"].item())
    assert policy.max_length(rows).item() == 32


# --- the JS acceptance rule -------------------------------------------------------------------


def warm_policy(t_v_target: float, spec="adasd:n_min=1"):
    """An AdaSD policy for one row whose statistics are warm with T_V close to ``t_v_target``."""
    policy = make_method(spec).policy
    policy.begin(torch.tensor([0]))
    s = policy._state
    s["n_acc"][0], s["n_rej"][0] = 1, 1
    s["d_acc_sum"][0], s["d_rej_sum"][0] = t_v_target, t_v_target
    s["h_rej_sum"][0] = 100.0
    return policy


def test_js_rule_greedy_accepts_close_tokens_but_respects_top_k():
    policy = warm_policy(0.9)
    method = make_method("adasd:n_min=1")
    method.policy = policy
    rows = torch.tensor([0])
    # position 0: token 1 is second best (in the top-2); position 1: token 2 is third (outside the top-2)
    target_logits = torch.tensor([[[3.0, 2.8, 0.0, -1.0], [2.0, 3.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0]]])
    draft_soft = target_logits[0, :2].softmax(-1)[None].clone()
    for params, expect_n in [(SamplingParams(0.0), 2), (SamplingParams(0.0, top_k=2), 1)]:
        rule = method.rule(params)
        tokens = torch.tensor([[1, 2]])  # token 1: not argmax but in top-2; token 2: outside top-2
        verdict = rule(Proposal(tokens, torch.tensor([2]), draft_soft, target_logits, None, params, [torch.Generator()], rows))
        assert verdict.num_accepted.item() == expect_n
        # correction / bonus: the argmax of the target at the first non-accepted position
        assert verdict.next_token.item() == int(target_logits[0, expect_n].argmax())


def greedy_verdict(policy, combine, target_logits, tokens, q_equals_p):
    """Run the JS rule in greedy mode on one row; the draft's soft q is p itself (d = 0) or p reversed (d large)."""
    from specadapt.acceptance.adasd import AdaSDAcceptance

    soft = target_logits[:, : tokens.shape[1]].softmax(-1)
    q = soft if q_equals_p else soft.flip(-1)
    rule = AdaSDAcceptance(policy, combine)
    return rule(Proposal(tokens, torch.tensor([tokens.shape[1]]), q, target_logits, None, SamplingParams(0.0),
                         [torch.Generator()], torch.tensor([0])))


def test_js_rule_replace_mode_and_cold_start():
    target_logits = torch.tensor([[[3.0, 1.0, 0.0, -1.0], [1.0, 0.0, 0.0, 0.0]]])
    argmax, other = torch.tensor([[0]]), torch.tensor([[1]])
    # warm, tiny T_V, d large: "or" keeps the standard acceptance, "replace" rejects (and emits argmax p = 0)
    assert greedy_verdict(warm_policy(1e-6), "or", target_logits, argmax, False).num_accepted.item() == 1
    verdict = greedy_verdict(warm_policy(1e-6), "replace", target_logits, argmax, False)
    assert verdict.num_accepted.item() == 0 and verdict.next_token.item() == 0
    # warm, d = 0 < T_V: a non-argmax token is JS-accepted in both modes
    for combine in ("or", "replace"):
        assert greedy_verdict(warm_policy(0.5), combine, target_logits, other, True).num_accepted.item() == 1
    # cold: no JS acceptance even at d = 0, and "replace" falls back to the standard test
    for combine in ("or", "replace"):
        cold = make_method("adasd:n_min=5").policy
        cold.begin(torch.tensor([0]))
        assert greedy_verdict(cold, combine, target_logits, other, True).num_accepted.item() == 0
        assert greedy_verdict(cold, combine, target_logits, argmax, False).num_accepted.item() == 1


def test_js_rule_never_accepts_zero_target_probability():
    policy = warm_policy(0.95)
    method = make_method("adasd:n_min=1")
    method.policy = policy
    params = SamplingParams(1.0, top_k=2)
    rule = method.rule(params)
    rows = torch.tensor([0])
    # p: the target's top-2; q: fairly close to p (d < T_V) with some mass on token 2, outside the top-k
    target_logits = torch.log(torch.tensor([[[0.5, 0.45, 0.04, 0.01]] * 2]))
    p = process_logits(target_logits, params)
    q = torch.tensor([[[0.2, 0.7, 0.1, 0.0]]])
    assert p[0, 0, 2] == 0 and JS(p[0, 0], q[0, 0]) < 0.5
    for seed in range(50):
        for token, expect in [(2, 0), (1, 1)]:
            x = torch.tensor([[token]])
            g = torch.Generator().manual_seed(seed)
            verdict = rule(Proposal(x, torch.tensor([1]), q, target_logits, p, params, [g], rows))
            assert verdict.num_accepted.item() == expect  # token 1 is JS-accepted even when u > p/q
            assert p[0, verdict.num_accepted.item(), verdict.next_token.item()] > 0


def test_js_rule_end_to_end_stays_in_target_support(pair):
    target, draft = pair
    params = SamplingParams(1.0, top_k=2)
    engine = make_engine(target, draft)
    config = RequestConfig(max_new_tokens=3, temperature=1.0, top_k=2, seed=7)
    results = engine.generate([PROMPT] * 1500, make_method("adasd:n_min=1,scope=shared"), config)
    joint = exact_joint(target, params)
    samples = np.array([r.token_ids for r in results])
    assert (joint[samples[:, 0], samples[:, 1], samples[:, 2]] > 0).all()
    assert all(not r.lossless for r in results)


def test_engine_hands_each_row_the_js_distances_its_rule_computed(pair):
    """The policy's observe() gets, per row, the JS distances the acceptance rule computed for that row, also when
    the batch mixes sampling settings (one rule call per group, merged by the engine)."""
    target, draft = pair
    method = make_method("adasd:n_min=1")
    computed, observed = [], []  # per round: {slot: distances}

    class SpyRule:
        def __init__(self, rule):
            self.rule = rule

        def __getattr__(self, name):  # name, lossless, settings(), ...: the wrapped rule's
            return getattr(self.rule, name)

        def __call__(self, proposal):
            verdict = self.rule(proposal)
            if proposal.draft_tokens.shape[1]:  # a round that drafted nothing has no distances (and no observe)
                d = verdict.token_scores["js_distance"]
                computed[-1].update({s: d[j].clone() for j, s in enumerate(proposal.slots.tolist())})
            return verdict

    make_rule, observe = method.rule, method.policy.observe
    method.rule = lambda params: SpyRule(make_rule(params))

    def spy_observe(outcome):
        d = outcome.token_scores["js_distance"]
        observed.append({s: d[j].clone() for j, s in enumerate(outcome.slots.tolist())})
        computed.append({})  # the next round's rule calls
        observe(outcome)

    method.policy.observe = spy_observe
    computed.append({})
    configs = [RequestConfig(max_new_tokens=12), RequestConfig(max_new_tokens=12, temperature=1.0, seed=3),
               RequestConfig(max_new_tokens=12, temperature=0.7, top_k=3, seed=4)]
    make_engine(target, draft).generate([PROMPT, PROMPT[:2], PROMPT[1:]], method, configs)
    assert observed and len(observed[0]) == 3
    for got, want in zip(observed, computed):
        assert got.keys() == want.keys()
        for slot in got:
            assert torch.equal(got[slot], want[slot])


def test_lossless_flags_and_recorded_settings(target, close_draft):
    described = make_method("adasd:combine=replace").describe(SamplingParams(0.7))
    assert described["lossless"] is False
    assert described["acceptance"] == "adasd-js"
    assert described["acceptance_settings"]["combine"] == "replace"
    assert described["policy_settings"] == {
        "n_min": 5, "cold_start_k": 8, "max_k": 32, "first_rejection_only": True, "scope": "prior", "combine": "replace"
    }
    assert make_method("adasd-stop").describe(SamplingParams(0.7))["lossless"] is True
    result = make_engine(target, close_draft).generate([PROMPTS[0]], make_method("adasd"), RequestConfig(max_new_tokens=8))[0]
    assert result.lossless is False and result.settings["method"] == "adasd"


@pytest.mark.parametrize(
    "spec",
    ["adasd:combine=and", "adasd:n_min=-1", "adasd:max_k=0", "adasd:cold_start_k=0", "adasd-stop:scope=global",
     "adasd-stop:combine=or"],
)
def test_bad_settings(spec):
    with pytest.raises(SpecAdaptError):
        make_method(spec)


# --- losslessness of the stopping rule (greedy equivalence: tests/test_engine_greedy.py) ---------

def test_adasd_stop_is_lossless_monte_carlo(pair):
    target, draft = pair
    # shared statistics with n_min = 1: the thresholds are warm after the first round
    pvalues = run_checks(target, draft, "adasd-stop:n_min=1,scope=shared", SAMPLING["t0.7-topk4"], seed=1000)
    assert min(pvalues) > ALPHA, pvalues
