"""SpecDec++: the acceptance head (model, save/load, errors) and the stopping policy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from specadapt.heads import format as heads
from specadapt.engine import RequestConfig
from specadapt.errors import SpecAdaptError
from specadapt.heads import AcceptanceHead, load_head, read_head_config, save_head
from specadapt.methods import make_method
from specadapt.models import zoo
from specadapt.policies import DraftStep
from specadapt.policies.specdecpp import SpecDecPP
from specadapt.sampling import SamplingParams

from conftest import hf_greedy, make_engine, play_round, tiny_llama
from test_losslessness import ALPHA, run_checks

H = 32  # hidden size of the tiny Llamas in conftest
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]


# ---------------------------------------------------------------- heads used by the tests


def constant_head(accept: bool, hidden: int = H) -> AcceptanceHead:
    """Zero weights, a big bias on one class: P(accept) is 1 (or 0) whatever the input."""
    head = AcceptanceHead(hidden, num_blocks=3, shared_blocks=False)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.out.bias.copy_(torch.tensor([-20.0, 20.0] if accept else [20.0, -20.0]))
    return head


def probe_head(hidden: int = H) -> AcceptanceHead:
    """No blocks; logit(accept) - logit(reject) = x[0], so P(accept) = sigmoid(x[0])."""
    head = AcceptanceHead(hidden, num_blocks=0)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.out.weight[1, 0] = 1.0
    return head


def random_head(seed: int, hidden: int = H, shared: bool = True, accept_bias: float = 0.0) -> AcceptanceHead:
    """Default init; ``accept_bias`` shifts the accept logit (2-3 on the tiny models: mostly high, varied P(accept))."""
    torch.manual_seed(seed)
    head = AcceptanceHead(hidden, num_blocks=3, shared_blocks=shared)
    with torch.no_grad():
        head.out.bias[1] += accept_bias
    return head


def spec(head_dir, **settings) -> str:
    return "specdecpp:" + ",".join([f"head={head_dir}"] + [f"{k}={v}" for k, v in settings.items()])


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def steps_for(policy: SpecDecPP, step_probs: list[list[float]]) -> list[int]:
    """One round for b rows through the round protocol; row i's head output at step k is step_probs[i][k-1].
    Returns how many tokens each row drafted (the step at which the policy stopped it)."""
    b, K = len(step_probs), len(step_probs[0])
    hidden = torch.zeros(b, K, H)
    hidden[:, :, 0] = torch.tensor([[logit(p) for p in seq] for seq in step_probs])
    block = play_round(policy, torch.arange(b), torch.full((b, K, 8), 1 / 8), [0] * b, limit=[64] * b, hidden=hidden)
    return block.lens.tolist()


@pytest.fixture
def head_dir(tmp_path):
    """Save ``head`` under a fresh folder and return the path."""
    counter = iter(range(1000))

    def write(head: AcceptanceHead, **extra) -> str:
        return str(save_head(head, tmp_path / f"head{next(counter)}", extra=extra or None))

    return write


# ---------------------------------------------------------------- the one-step lag


def stops(step_probs: list[float], threshold: float, min_k: int, max_k: int, head_dir) -> int:
    policy = make_method(spec(head_dir(probe_head()), threshold=threshold, min_k=min_k, max_k=max_k)).policy
    return steps_for(policy, [step_probs])[0]


def test_stop_step_lag_and_bounds(head_dir):
    # step_probs[k-1] = head output at step k = P(accept) of token k-1 (step 1's is the committed token's).
    # Without the lag a 0.01 at step 1 would stop at once; with it step 1 is always free.
    assert stops([0.01, 0.6, 0.6, 0.6], threshold=0.5, min_k=1, max_k=4, head_dir=head_dir) == 3  # cum: 1, .6, .36
    # A low probability for token 2 shows up at step 3, not step 2.
    assert stops([0.9, 0.9, 0.1, 0.9], threshold=0.5, min_k=1, max_k=20, head_dir=head_dir) == 3
    assert stops([0.9, 0.1, 0.9, 0.9], threshold=0.5, min_k=1, max_k=20, head_dir=head_dir) == 2
    assert stops([0.9, 0.1, 0.9, 0.9], threshold=0.5, min_k=3, max_k=20, head_dir=head_dir) == 3  # never before min_k
    assert stops([1.0 - 1e-6] * 5, threshold=0.5, min_k=2, max_k=5, head_dir=head_dir) == 5  # always at max_k
    assert stops([0.5] * 30, threshold=0.7, min_k=2, max_k=20, head_dir=head_dir) == 3  # 1 - .25 > .7
    assert stops([0.5] * 30, threshold=0.3, min_k=2, max_k=20, head_dir=head_dir) == 2  # 1 - .5 > .3


# ---------------------------------------------------------------- the policy driven directly


def test_policy_matches_pure_rule_per_row_and_resets_per_round(head_dir):
    policy = make_method(spec(head_dir(probe_head()), threshold=0.5, min_k=1, max_k=6)).policy
    seqs = [[0.01, 0.6, 0.6, 0.6, 0.6, 0.6], [0.9, 0.9, 0.1, 0.9, 0.9, 0.9], [0.99] * 6, [0.9, 0.3, 0.9, 0.9, 0.9, 0.9]]
    expected = [3, 3, 6, 2]
    policy.begin(torch.arange(len(seqs)))
    assert steps_for(policy, seqs) == expected
    assert steps_for(policy, seqs[::-1]) == expected[::-1]  # a new round starts from cum = 1
    assert policy.max_length(torch.arange(3)).tolist() == [6, 6, 6]


@pytest.mark.parametrize("min_k,max_k", [(2, 20), (3, 7), (1, 1)])
def test_policy_constant_heads_hit_the_bounds(head_dir, min_k, max_k):
    accept = make_method(spec(head_dir(constant_head(True)), min_k=min_k, max_k=max_k)).policy
    reject = make_method(spec(head_dir(constant_head(False)), min_k=min_k, max_k=max_k)).policy
    assert steps_for(accept, [[0.5] * max_k] * 2) == [max_k] * 2
    assert steps_for(reject, [[0.5] * max_k] * 2) == [min(max(min_k, 2), max_k)] * 2  # step 1 never stops (lag)


def producing_probe_head(hidden: int = H) -> AcceptanceHead:
    """A "producing" head whose P(accept) = sigmoid(x[0]): it reads the state, not the features."""
    head = AcceptanceHead(hidden, num_blocks=0, input="producing")
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.out.weight[1, 0] = 1.0
    return head


def test_producing_head_has_no_lag(head_dir):
    # Each step's own factor counts, step 1's included: a 0.01 at step 1 stops at once (given min_k = 1).
    policy = make_method(spec(head_dir(producing_probe_head()), threshold=0.5, min_k=1, max_k=6)).policy
    assert steps_for(policy, [[0.01] + [0.9] * 5, [0.9, 0.9, 0.1, 0.9, 0.9, 0.9], [0.8] * 6]) == [1, 3, 4]  # .8^4 < .5


def test_producing_head_reads_the_token_distribution(head_dir):
    """P(accept) = sigmoid(log q(token)): a confident draft token passes, an unlikely one stops the round."""
    head = AcceptanceHead(H, num_blocks=0, input="producing")
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.out.weight[1, H] = 1.0  # the first feature, log q(token)
    policy = make_method(spec(head_dir(head), threshold=0.6, min_k=1, max_k=4)).policy
    probs = torch.tensor([[0.98, 0.01, 0.01], [0.05, 0.9, 0.05]])
    step = DraftStep(1, torch.tensor([0, 0]), probs, torch.zeros(2, H), torch.arange(2), torch.ones(2, dtype=torch.bool))
    # sigmoid(log .98) = .495 (1 - .495 > .6 is false: go on); sigmoid(log .05) = .048: stop.
    assert policy.should_stop(step).tolist() == [False, True]


def test_distribution_features_hand_worked():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.25, 0.75, 0.0]])
    f = heads.distribution_features(probs, torch.tensor([1, 2, 1]))
    assert f[0].tolist() == pytest.approx([math.log(0.5), math.log(2), math.log(0.5)])
    assert f[1].tolist() == pytest.approx([-30.0, 0.0, 0.0])  # a token without mass: clamped, not -inf
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert f[2].tolist() == pytest.approx([math.log(0.75), h, math.log(0.25)], rel=1e-6)
    assert torch.equal(heads.draft_features(torch.tensor([-1.0, -99.0, 0.0]), torch.tensor([2.0, 0.5, 0.0])),
                       torch.tensor([[-1.0, 2.0, math.log(1 - math.exp(-1.0))], [-30.0, 0.5, 0.0], [0.0, 0.0, -30.0]]))


def test_producing_head_round_trip_and_format(tmp_path):
    head = AcceptanceHead(H, num_blocks=1, input="producing")
    path = save_head(head, tmp_path / "h")
    config = read_head_config(path)
    assert config["input"] == "producing" and config["format_version"] == 3
    assert config["features"] == ["draft_logprob", "draft_entropy", "draft_log_rest"]
    loaded = load_head(path)
    x, f = torch.randn(3, H), torch.randn(3, 3)
    assert loaded.reads_features and torch.allclose(loaded.accept_prob(x, f), head.accept_prob(x, f))
    with pytest.raises(ValueError, match="draft features"):
        loaded.accept_prob(x)
    old = save_head(AcceptanceHead(H, num_blocks=0), tmp_path / "old")
    stored = json.loads((old / "config.json").read_text())
    assert stored["format_version"] == 1  # a consumed head stays readable by older versions
    del stored["input"]
    (old / "config.json").write_text(json.dumps(stored))
    assert read_head_config(old)["input"] == "consumed"  # heads written before the field existed
    stored["input"] = "sideways"
    (old / "config.json").write_text(json.dumps(stored))
    with pytest.raises(SpecAdaptError, match="input must be one of consumed, producing, features"):
        read_head_config(old)


def test_a_version_2_producing_head_reads_two_features(tmp_path):
    """Heads written before log(1 - q) existed (format_version 2, no "features" key) still load and predict alike."""
    torch.manual_seed(0)
    head = AcceptanceHead(H, num_blocks=1, input="producing", features=("draft_logprob", "draft_entropy"))
    path = save_head(head, tmp_path / "v2")
    stored = json.loads((path / "config.json").read_text())
    assert stored["format_version"] == 2
    del stored["features"]
    (path / "config.json").write_text(json.dumps(stored))
    loaded = load_head(path)
    assert loaded.features == ("draft_logprob", "draft_entropy")
    x, f = torch.randn(3, H), torch.randn(3, 3)
    assert torch.allclose(loaded.accept_prob(x, f), head.accept_prob(x, f[:, :2]))
    stored["features"] = ["draft_entropy"]
    (path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(SpecAdaptError, match="features must be a non-empty prefix"):
        read_head_config(path)


def test_features_head_ignores_the_hidden_state(tmp_path):
    torch.manual_seed(0)
    head = AcceptanceHead(H, num_blocks=1, input="features")
    assert head.out.weight.shape == (2, 3)
    loaded = load_head(save_head(head, tmp_path / "f"))
    assert read_head_config(tmp_path / "f")["format_version"] == 3
    f = torch.randn(4, 3)
    p = loaded.accept_prob(torch.randn(4, H), f)
    assert torch.equal(p, loaded.accept_prob(torch.zeros(4, H), f)) and torch.allclose(p, head.accept_prob(torch.ones(4, H), f))


@pytest.mark.parametrize("head_input", ["producing", "features"])
def test_engine_with_a_no_lag_head_is_lossless(head_input, target, head_dir):
    torch.manual_seed(0)
    head = AcceptanceHead(H, num_blocks=1, input=head_input)
    method = make_method(spec(head_dir(head), threshold=0.5))
    results = make_engine(target, tiny_llama(1)).generate(PROMPTS, method, RequestConfig(max_new_tokens=12))
    for prompt, r in zip(PROMPTS, results):
        assert r.token_ids == hf_greedy(target, prompt, 12) and r.stats.drafted > 0


# ---------------------------------------------------------------- through the engine


def test_engine_always_accept_head_drafts_max_k(target, head_dir):
    max_k, rounds = 6, 4
    results = make_engine(target, target).generate(
        PROMPTS, make_method(spec(head_dir(constant_head(True)), max_k=max_k)), RequestConfig(max_new_tokens=(max_k + 1) * rounds),
        load_rule="off",  # the head's own lengths, uncapped
    )
    for r in results:
        assert r.stats.mean_draft_length == max_k
        assert r.stats.acceptance_rate == 1.0 and r.stats.rounds == rounds


@pytest.mark.parametrize("min_k", [2, 3])
def test_engine_always_reject_head_drafts_min_k(target, head_dir, min_k):
    rounds = 4
    method = make_method(spec(head_dir(constant_head(False)), min_k=min_k))
    results = make_engine(target, target).generate(PROMPTS, method, RequestConfig(max_new_tokens=(min_k + 1) * rounds),
                                                   load_rule="off")
    for r in results:
        assert r.stats.mean_draft_length == min_k
        assert r.stats.acceptance_rate == 1.0 and r.stats.rounds == rounds
    assert results[0].settings["method"] == "specdecpp" and results[0].lossless


@pytest.mark.parametrize("draft_name", ["close_draft", "random_draft", "target"])
def test_greedy_equals_target_generate(target, draft_name, request, head_dir):
    draft = request.getfixturevalue(draft_name)
    method = make_method(spec(head_dir(random_head(7, accept_bias=2.0)), threshold=0.5, max_k=8))
    results = make_engine(target, draft).generate(PROMPTS, method, RequestConfig(max_new_tokens=24), load_rule="off")
    for prompt, r in zip(PROMPTS, results):
        assert r.token_ids == hf_greedy(target, prompt, 24)
    # the head really decides: rounds stop strictly between min_k and max_k
    lengths = [r.stats.mean_draft_length for r in results]
    assert any(2 < n < 7 for n in lengths), lengths


def test_sampling_is_lossless_monte_carlo(head_dir):
    # Same pair and check as test_losslessness.py. With 3 generated tokens the cap per round is <= 2,
    # so this checks the hidden-state path of the engine end to end rather than the stopping rule.
    target, draft = tiny_llama(0, vocab=8, init_range=0.3), tiny_llama(3, vocab=8, init_range=0.3)
    name = spec(head_dir(random_head(5, accept_bias=3.0)), threshold=0.5, min_k=1, max_k=4)
    pvalues = run_checks(target, draft, name, SamplingParams(1.0), seed=2024)
    assert min(pvalues) > ALPHA, pvalues


# ---------------------------------------------------------------- head format


@pytest.mark.parametrize("shared", [True, False])
def test_save_load_round_trip(tmp_path, shared):
    head = random_head(3, shared=shared)
    folder = save_head(head, tmp_path / "h", extra={"draft": "tiny-1", "target": "tiny-0", "threshold": 0.6})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "head.safetensors"]
    config = read_head_config(folder)
    assert config["hidden_size"] == H and config["num_blocks"] == 3 and config["shared_blocks"] is shared
    assert config["draft"] == "tiny-1" and config["threshold"] == 0.6 and config["format_version"] == 1
    loaded = load_head(folder)
    assert loaded.shared_blocks is shared and len(loaded.blocks) == (1 if shared else 3)
    assert loaded.out.weight.dtype == torch.float32
    x = torch.randn(5, 7, H)
    with torch.no_grad():
        assert torch.equal(loaded(x), head(x))
        p = loaded.accept_prob(x)
    assert p.shape == (5, 7) and bool(((p > 0) & (p < 1)).all())
    half = load_head(folder, dtype=torch.bfloat16)
    assert half.out.weight.dtype == torch.bfloat16
    assert torch.allclose(half.accept_prob(x.bfloat16()), p, atol=0.05)


def test_shared_blocks_apply_one_linear_repeatedly():
    head = random_head(4, shared=True)
    x = torch.randn(3, H)
    lin = head.blocks[0]
    y = x
    for _ in range(3):
        y = y + torch.nn.functional.silu(lin(y))
    assert torch.allclose(head(x), head.out(y))
    assert sum(p.numel() for p in head.parameters()) == (H * H + H) + (2 * H + 2)


def test_save_refuses_to_overwrite(tmp_path):
    folder = save_head(random_head(1), tmp_path / "h")
    with pytest.raises(SpecAdaptError, match="already exists"):
        save_head(random_head(2), folder)
    save_head(random_head(2), folder, overwrite=True)
    assert torch.equal(load_head(folder).out.weight, random_head(2).out.weight)
    with pytest.raises(SpecAdaptError, match="clash"):
        save_head(random_head(1), tmp_path / "other", extra={"hidden_size": 3})


# ---------------------------------------------------------------- errors a user can hit


def _error(fn) -> str:
    with pytest.raises(SpecAdaptError) as info:
        fn()
    return str(info.value)


def test_errors_in_settings(tmp_path, head_dir, monkeypatch):
    monkeypatch.setattr(heads, "BUILTIN_HEADS_DIR", tmp_path / "no-heads")  # a build without shipped heads
    msg = _error(lambda: make_method("specdecpp"))
    assert "--head DIR" in msg and "train" in msg
    good = head_dir(probe_head())
    for bad in ("0", "1", "1.5", "-0.1"):
        assert "threshold must be in (0, 1)" in _error(lambda: make_method(spec(good, threshold=bad)))
    assert "min_k" in _error(lambda: make_method(spec(good, min_k=5, max_k=4)))
    assert "not found" in _error(lambda: make_method(spec(tmp_path / "missing")))
    assert make_method(f"specdecpp:{good}").policy.head == good  # the head is the first (positional) setting


def test_errors_in_head_folder(tmp_path, head_dir, target):
    folder = tmp_path / "h"
    save_head(probe_head(), folder)
    config = folder / "config.json"

    config.write_text("{not json")
    assert "not valid JSON" in _error(lambda: make_method(spec(folder)))
    config.write_text(json.dumps({"hidden_size": 32, "num_blocks": 0}))
    assert "missing shared_blocks" in _error(lambda: make_method(spec(folder)))
    config.write_text(json.dumps({"hidden_size": "32", "num_blocks": 0, "shared_blocks": True}))
    assert "hidden_size must be an integer" in _error(lambda: load_head(folder))
    config.unlink()
    assert "no config.json" in _error(lambda: make_method(spec(folder)))

    # Weights are read on first use: these surface from generate.
    engine = make_engine(target, target)
    cfg = RequestConfig(max_new_tokens=6)
    save_head(probe_head(), folder, overwrite=True)
    (folder / "head.safetensors").write_bytes(b"\x00garbage" * 10)
    msg = _error(lambda: engine.generate([[1, 2]], make_method(spec(folder)), cfg))
    assert "corrupt" in msg and "head.safetensors" in msg
    (folder / "head.safetensors").unlink()
    assert "no head.safetensors" in _error(lambda: engine.generate([[1, 2]], make_method(spec(folder)), cfg))

    # Weights that do not match the config (3 independent blocks saved, config says shared).
    save_head(random_head(1, shared=False), folder, overwrite=True)
    config.write_text(json.dumps({"hidden_size": 32, "num_blocks": 3, "shared_blocks": True}))
    msg = _error(lambda: engine.generate([[1, 2]], make_method(spec(folder)), cfg))
    assert "do not match its config" in msg and "unexpected blocks.1.weight" in msg
    config.write_text(json.dumps({"hidden_size": 32, "num_blocks": 3, "shared_blocks": False, "format_version": 9}))
    assert "newer" in _error(lambda: make_method(spec(folder)))


def test_hidden_size_mismatch_names_both_sizes(target, head_dir):
    method = make_method(spec(head_dir(random_head(1, hidden=16))))
    msg = _error(lambda: make_engine(target, target).generate([[1, 2, 3]], method, RequestConfig(max_new_tokens=8)))
    assert "16" in msg and "32" in msg and "another draft" in msg


def test_no_head_means_the_default_drafts_builtin_head(tmp_path, monkeypatch):
    shipped = tmp_path / "heads"
    save_head(probe_head(), shipped / zoo.DEFAULT_DRAFT, extra={"draft": zoo.DEFAULT_DRAFT, "threshold": 0.6})
    save_head(probe_head(), shipped / "other-draft")
    monkeypatch.setattr(heads, "BUILTIN_HEADS_DIR", shipped)
    policy = make_method("specdecpp").policy
    assert policy.head == str(shipped / zoo.DEFAULT_DRAFT) and policy.threshold == 0.6
    assert make_method("specdecpp:head=other-draft").policy.head == str(shipped / "other-draft")  # by name
    monkeypatch.chdir(tmp_path)
    save_head(probe_head(), tmp_path / "other-draft")  # a folder of that name in the working dir wins
    assert make_method("specdecpp:head=other-draft").policy.head == "other-draft"


def test_shipped_head_is_for_the_default_pair():
    """The head in the package loads and fits the default draft (Qwen2.5-Coder-0.5B: hidden size 896)."""
    shipped = heads.builtin_heads()
    assert zoo.DEFAULT_DRAFT in shipped
    config = heads.read_head_config(shipped[zoo.DEFAULT_DRAFT])
    assert config["draft"] == zoo.DEFAULT_DRAFT and config["target"] == zoo.DEFAULT_TARGET
    assert config["hidden_size"] == 896 and config["input"] == "features"
    assert (config["threshold"], config["min_k"], config["max_k"]) == (0.4, 1, 64)  # re-chosen for the int4 draft (tune_int4)
    head = load_head(shipped[zoo.DEFAULT_DRAFT])
    probs = torch.tensor([[0.99, 0.01, 0.0], [0.5, 0.3, 0.2], [0.3, 0.3, 0.4]])
    p = head.accept_prob(torch.zeros(3, 896), heads.distribution_features(probs, torch.tensor([0, 0, 0])))
    assert p[0] > p[1] > p[2]  # the more confident the draft, the likelier the target accepts


def test_threshold_defaults_to_the_one_recorded_in_the_head(head_dir):
    tuned = head_dir(probe_head(), threshold=0.4)  # what `specadapt tune-head` writes
    assert make_method(spec(tuned)).policy.threshold == 0.4
    assert make_method(spec(tuned, threshold=0.9)).policy.threshold == 0.9  # an explicit setting wins
    assert make_method(spec(head_dir(probe_head()))).policy.threshold == 0.7  # nothing recorded: the paper's value
    assert make_method(spec(head_dir(probe_head(), min_k=1))).policy.min_k == 1  # min_k likewise
    assert make_method(spec(head_dir(probe_head(), min_k=1), min_k=3)).policy.min_k == 3
    assert make_method(spec(tuned)).policy.min_k == 2
    assert make_method(spec(head_dir(probe_head(), max_k=32))).policy.max_k == 32  # and max_k
    assert make_method(spec(head_dir(probe_head(), max_k=32), max_k=8)).policy.max_k == 8
    assert make_method(spec(tuned)).policy.max_k == 20
    with pytest.raises(SpecAdaptError, match="need 1 <= min_k <= max_k"):
        make_method(spec(head_dir(probe_head(), max_k=3), min_k=4))
    with pytest.raises(SpecAdaptError, match="threshold must be in"):
        make_method(spec(head_dir(probe_head(), threshold=1.5)))


def test_head_option_reaches_specdecpp_and_is_refused_elsewhere(tmp_path):
    """--head (generate, bench, serve) adds head=... to a specdecpp method that names none; generate and serve run one
    method, so a head given for another method, or given twice, is an error there, not silently dropped."""
    from specadapt.methods import with_head
    from specadapt.serve.settings import ServeSettings

    assert with_head("specdecpp", "h") == "specdecpp:head=h"
    assert with_head("specdecpp:threshold=0.3", "h") == "specdecpp:head=h,threshold=0.3"
    assert with_head("specdecpp:head=mine", "h") == "specdecpp:head=mine"  # bench: the method's own head wins
    assert with_head("fixed:4", "h") == "fixed:4" and with_head("specdecpp", None) == "specdecpp"
    with pytest.raises(SpecAdaptError, match=r"^--head is the acceptance head of specdecpp, which method 'fixed:4' "
                                             r"does not read: drop --head, or use --method specdecpp\.$"):
        ServeSettings(method="fixed:4", head="h").make_method()
    with pytest.raises(SpecAdaptError, match=r"names its head already; give it once"):
        ServeSettings(method="specdecpp:head=a", head="b").make_method()
    save_head(probe_head(), tmp_path / "head", extra={"threshold": 0.4})
    policy = ServeSettings(method="specdecpp", head=str(tmp_path / "head")).make_method().policy
    assert policy.head == str(tmp_path / "head") and policy.threshold == 0.4  # the folder's tuned threshold
