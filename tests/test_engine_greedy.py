"""Greedy equivalence (fp32): speculative output is token-identical to the target's own greedy output."""

import pytest
import torch

from specadapt.engine import RequestConfig
from specadapt.methods import make_method
from specadapt.models.runner import ModelRunner
from specadapt.load import load_capped

from conftest import hf_greedy, make_engine

# Every lossless draft-length policy (SpecDec++ needs a head: tests/test_specdecpp.py).
POLICIES = [
    "autoregressive", "fixed:1", "fixed:4", "fixed:7", "heuristic", "confidence:threshold=0.05", "confidence:threshold=0.9",
    "dynamic-confidence", "dynamic-confidence:min_each=2", "adaedl", "adaedl:lambda_init=0.9,lr=0.5",
    "adasd-stop", "adasd-stop:n_min=1,scope=shared", "adasd-stop:n_min=1,scope=prior", "marginal", "marginal:cost=0.02",
    "marginal:cost=auto",
]
PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], [42]]


@pytest.mark.parametrize("method", POLICIES)
@pytest.mark.parametrize("draft_name", ["close_draft", "random_draft", "target"])
def test_greedy_equals_target_generate(method, draft_name, target, request):
    draft = request.getfixturevalue(draft_name)
    engine = make_engine(target, draft)
    results = engine.generate(PROMPTS, make_method(method), RequestConfig(max_new_tokens=24))
    for prompt, result in zip(PROMPTS, results):
        assert result.token_ids == hf_greedy(target, prompt, 24)
        assert result.lossless and result.finish_reason == "length"
        assert result.stats.generated_tokens == 24


def test_partially_agreeing_pair_rejects_and_accepts(target, close_draft):
    result = make_engine(target, close_draft).generate(PROMPTS, make_method("fixed:4"), RequestConfig(max_new_tokens=40))
    rates = [r.stats.acceptance_rate for r in result]
    assert all(0.0 < r < 1.0 for r in rates), rates


@pytest.mark.parametrize("k", [1, 3, 5])
def test_draft_equal_target_accepts_everything(k, target):
    n_rounds = 4
    results = make_engine(target, target).generate(
        PROMPTS, make_method(f"fixed:{k}"), RequestConfig(max_new_tokens=(k + 1) * n_rounds), load_rule="off"
    )
    for r in results:
        assert r.stats.acceptance_rate == 1.0
        assert r.stats.mean_accepted_length == k + 1
        assert r.stats.rounds == n_rounds
        assert r.stats.per_position_acceptance == [1.0] * k


def test_random_draft_rejects_most(target, random_draft):
    r = make_engine(target, random_draft).generate([PROMPTS[0]], make_method("fixed:4"), RequestConfig(max_new_tokens=30))[0]
    assert r.stats.acceptance_rate < 0.5


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 9])
@pytest.mark.parametrize("draft_name", ["target", "close_draft"])
def test_max_new_tokens_is_exact(n, draft_name, target, request):
    engine = make_engine(target, request.getfixturevalue(draft_name))
    for r, prompt in zip(engine.generate(PROMPTS, make_method("fixed:4"), RequestConfig(max_new_tokens=n)), PROMPTS):
        assert r.token_ids == hf_greedy(target, prompt, n)
        assert r.stats.generated_tokens == n == r.stats.accepted + r.stats.rounds


def test_eos_inside_drafted_block(target):
    # With draft == target every round accepts 4 drafts, so an EOS at output position 6
    # sits inside a drafted block; nothing after it may be emitted.
    prompt = PROMPTS[2]
    reference = hf_greedy(target, prompt, 30)
    # rounds emit output positions 0-4, 5-9, ...; positions 6-8 are drafted tokens mid-block
    eos = next(t for t in reference if reference.index(t) in (6, 7, 8))
    cut = reference.index(eos)
    engine = make_engine(target, target, eos=[eos])
    r = engine.generate([prompt], make_method("fixed:4"), RequestConfig(max_new_tokens=30))[0]
    assert r.token_ids == reference[: cut + 1] == hf_greedy(target, prompt, 30, eos=eos)
    assert r.finish_reason == "eos"
    assert r.stats.generated_tokens == cut + 1 == r.stats.accepted + r.stats.rounds


def test_stop_string_inside_drafted_block(target):
    prompt = PROMPTS[2]
    reference = hf_greedy(target, prompt, 30)
    stop = f"{reference[6]} {reference[7]}"
    r = make_engine(target, target).generate(
        [prompt], make_method("fixed:5"), RequestConfig(max_new_tokens=30, stop_strings=[stop])
    )[0]
    first = " ".join(map(str, reference)).index(stop)
    # generation ends with the token that completes the first occurrence of the stop string
    assert r.finish_reason == "stop"
    assert " ".join(map(str, r.token_ids)).endswith(stop)
    assert r.token_ids == reference[: len(r.token_ids)]
    assert len(" ".join(map(str, r.token_ids))) == first + len(stop)


def test_batch_equals_single_with_finished_rows_leaving(target, close_draft):
    engine = make_engine(target, close_draft, eos=[hf_greedy(target, PROMPTS[1], 8)[3]])
    config = RequestConfig(max_new_tokens=20)
    batch = engine.generate(PROMPTS, make_method("heuristic"), config, load_rule="off")  # the policy's own K
    assert batch[1].finish_reason == "eos"  # a row finishing early leaves the batch
    for prompt, r in zip(PROMPTS, batch):
        single = engine.generate([prompt], make_method("heuristic"), config)[0]
        assert single.token_ids == r.token_ids
        assert single.stats.rounds == r.stats.rounds


def test_batch_equals_single_when_sampling(target, close_draft):
    engine = make_engine(target, close_draft)
    batch = engine.generate(PROMPTS, make_method("fixed:3"), RequestConfig(max_new_tokens=16, temperature=0.9, seed=11))
    for i, (prompt, r) in enumerate(zip(PROMPTS, batch)):
        single = engine.generate([prompt], make_method("fixed:3"), RequestConfig(max_new_tokens=16, temperature=0.9, seed=11 + i))[0]
        assert single.token_ids == r.token_ids
        assert r.seed == 11 + i


def test_seeded_sampling_is_reproducible(target, close_draft):
    engine = make_engine(target, close_draft)
    config = RequestConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=5)
    a = engine.generate(PROMPTS, make_method("heuristic"), config)
    b = engine.generate(PROMPTS, make_method("heuristic"), config)
    c = engine.generate(PROMPTS, make_method("heuristic"), RequestConfig(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=6))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_streaming_callback_sees_every_token(target, close_draft):
    seen: dict[int, list[int]] = {}
    results = make_engine(target, close_draft).generate(
        PROMPTS, make_method("fixed:4"), RequestConfig(max_new_tokens=12), on_tokens=lambda i, ids: seen.setdefault(i, []).extend(ids)
    )
    assert [seen[i] for i in range(len(PROMPTS))] == [r.token_ids for r in results]


# Each request with its own sampling parameters, length and stop condition.
MIXED = [
    RequestConfig(max_new_tokens=20),
    RequestConfig(max_new_tokens=9, temperature=0.9, seed=3),
    RequestConfig(max_new_tokens=16, temperature=1.2, top_k=5, seed=4),
    RequestConfig(max_new_tokens=12, temperature=0.7, top_p=0.8, seed=5),
]


@pytest.mark.parametrize("method", ["fixed:3", "heuristic", "adasd-stop:n_min=1", "autoregressive"])
def test_requests_with_their_own_settings_in_one_batch_equal_each_alone(target, close_draft, method):
    engine = make_engine(target, close_draft)
    together = engine.generate(PROMPTS, make_method(method), MIXED)
    for prompt, config, r in zip(PROMPTS, MIXED, together):
        alone = engine.generate([prompt], make_method(method), config)[0]
        assert r.token_ids == alone.token_ids and r.stats.rounds == alone.stats.rounds
        assert len(r.token_ids) == config.max_new_tokens and (config.seed is None or r.seed == config.seed)
    assert together[0].token_ids == hf_greedy(target, PROMPTS[0], 20)


@pytest.mark.parametrize("method", ["fixed:4", "heuristic", "adaedl", "dynamic-confidence:min_each=2"])
def test_requests_joining_a_running_batch_equal_each_alone(target, close_draft, method):
    """Requests added between rounds (as a server admits them) get exactly what they get alone, and the batch
    reuses the state slots of requests that left."""
    engine = make_engine(target, close_draft)
    batch = engine.batch(make_method(method))
    first = batch.add(PROMPTS[0], RequestConfig(max_new_tokens=6))
    joined = []
    for round_no in range(40):
        if round_no in (1, 3, 4):
            k = len(joined) + 1
            joined.append(batch.add(PROMPTS[k], MIXED[k]))
        batch.step()
    assert batch.active == 0
    assert first.output == hf_greedy(target, PROMPTS[0], 6)
    for k, r in enumerate(joined, start=1):
        assert r.output == engine.generate([PROMPTS[k]], make_method(method), MIXED[k])[0].token_ids
    late = batch.add(PROMPTS[0], RequestConfig(max_new_tokens=2))
    while batch.active:
        batch.step()
    assert late.slot == 0 and late.output == hf_greedy(target, PROMPTS[0], 2)  # slots of finished requests are reused


@pytest.mark.parametrize("method", ["fixed:4", "adaedl+lookup"])
def test_early_first_token_emits_the_prefills_token_before_any_draft(target, close_draft, method):
    """With ``early_first_token`` (the server's default) a request's first round drafts nothing for it: its first
    token comes from the prompt's prefill alone, the draft has not been fed yet, and the output is unchanged."""
    engine = make_engine(target, close_draft)
    batch = engine.batch(make_method(method), early_first_token=True)
    first = batch.add(PROMPTS[2], RequestConfig(max_new_tokens=24))
    batch.step()
    assert first.output == hf_greedy(target, PROMPTS[2], 1) and first.stats.drafted == 0
    assert batch.last_round.K == 0 and batch.draft.unfed_rows() == [0]  # the draft did not run
    batch.step()
    assert batch.last_round.K > 0 and batch.last_round.drafted == [batch.last_round.K] and len(first.output) > 2
    joining = batch.add(PROMPTS[0], RequestConfig(max_new_tokens=10))
    batch.step()  # the running request drafts; the one that joined gets its first token without drafts
    assert batch.last_round.K > 0 and batch.last_round.drafted[1] == 0 and len(joining.output) == 1
    while batch.active:
        batch.step()
    assert first.output == hf_greedy(target, PROMPTS[2], 24) and joining.output == hf_greedy(target, PROMPTS[0], 10)
    assert joining.stats.drafted > 0


def test_cancelled_requests_leave_and_the_rest_go_on(target, close_draft):
    engine = make_engine(target, close_draft)
    batch = engine.batch(make_method("fixed:3"))
    a, b, c = (batch.add(p, RequestConfig(max_new_tokens=20)) for p in PROMPTS[:3])
    batch.cancel(c)  # before it joined: it never runs
    batch.step()
    batch.cancel(a)  # mid-run: its row is freed before the next round
    batch.step()
    assert len(batch.requests) == 1 and batch.requests[0] is b
    while batch.active:
        batch.step()
    assert (a.finish_reason, b.finish_reason, c.finish_reason) == ("cancelled", "length", "cancelled")
    assert c.output == [] and 0 < len(a.output) < 20
    assert b.output == hf_greedy(target, PROMPTS[1], 20)
    assert batch.add(PROMPTS[3], RequestConfig(max_new_tokens=2)).slot == 0  # freed slots are reused


def test_the_longest_request_leaving_first_drops_its_columns(target, close_draft):
    """When the request with the longest history leaves, the cache's leading all-hole positions are dropped
    (and new requests padded in) without changing anyone's output."""
    engine = make_engine(target, close_draft)
    batch = engine.batch(make_method("fixed:3"))
    long = batch.add(PROMPTS[2], RequestConfig(max_new_tokens=2))
    short = batch.add(PROMPTS[3], RequestConfig(max_new_tokens=24))
    while long.finish_reason is None:
        batch.step()
    assert batch.requests == [short] and bool(batch.target.mask.all()) and bool(batch.draft.mask.all())  # no holes
    late = batch.add(PROMPTS[1], RequestConfig(max_new_tokens=10))
    while batch.active:
        batch.step()
    assert short.output == hf_greedy(target, PROMPTS[3], 24) and late.output == hf_greedy(target, PROMPTS[1], 10)


def test_a_prompt_joining_a_running_batch_is_prefilled_apart(target, close_draft):
    """A joining prompt is fed to each model in a pass over its own row: the running rows are not padded to its
    length (their passes stay a round's width) and the cache does not grow by the prompt where it already has
    the columns. The draft is fed it only when it drafts for it: a target-only round spends nothing on it."""
    engine = make_engine(target, close_draft)
    method, cap = load_capped(make_method("fixed:3"))
    batch = engine.batch(method)
    running = batch.add(PROMPTS[2] * 2, RequestConfig(max_new_tokens=24))  # 22 prompt tokens: a wide cache
    batch.step()
    fed = []
    # On the embeddings: the draft's few-token steps skip the transformers forward (models/decode_step.py).
    hooks = [m.model.embed_tokens.register_forward_pre_hook(
        lambda e, args: fed.append((e is target.model.embed_tokens, tuple(args[0].shape)))) for m in (target, close_draft)]
    width = batch.target.mask.shape[1]
    joining = batch.add(PROMPTS[2], RequestConfig(max_new_tokens=10))  # 11 tokens: fits in the cache's columns
    cap.cap = 0  # a target-only round: the draft is not fed the new prompt
    batch.step()
    assert fed == [(True, (1, 10)), (True, (2, 1))]  # the new row alone, all but its last token; then the round
    assert batch.target.mask.shape[1] == width + 1 and batch.draft.unfed_rows() == [1]
    fed.clear()
    cap.cap = None
    batch.step()
    for hook in hooks:
        hook.remove()
    assert fed[0] == (False, (1, 11))  # the draft catches up on the new row alone (prompt + the token emitted since)
    assert all(shape[0] == 2 and shape[1] <= 2 + 3 for _, shape in fed[1:])  # then a plain round over both rows
    assert batch.draft.unfed_rows() == []
    while batch.active:
        batch.step()
    assert running.output == hf_greedy(target, PROMPTS[2] * 2, 24)
    assert joining.output == hf_greedy(target, PROMPTS[2], 10)


@pytest.mark.parametrize("history", [0, 3, 30])  # an empty cache, one shorter than the prompt, one longer
def test_a_filled_row_computes_what_the_sequence_fed_alone_computes(target, history):
    prompt = PROMPTS[2] + PROMPTS[0]  # 16 tokens
    alone = ModelRunner(target)
    alone.add_rows(1)
    alone.fill_rows([0], [prompt])
    expected, _ = alone.forward(torch.tensor([[7]]))
    runner = ModelRunner(target)
    runner.add_rows(3)
    if history:
        runner.forward(torch.tensor([list(range(1, history + 1))] * 3))
        runner.keep_tail(history, torch.tensor([history, history, 0]))  # row 2: all holes again
    runner.fill_rows([2], [prompt])
    assert runner.mask.shape[1] == max(history, len(prompt)) and runner.unfed_rows() == ([] if history else [0, 1])
    logits, _ = runner.forward(torch.tensor([[5], [6], [7]]))
    torch.testing.assert_close(logits[2], expected[0], rtol=1e-4, atol=1e-4)


def test_prompts_joining_together_are_fed_in_groups_of_similar_length(target, close_draft):
    engine = make_engine(target, close_draft)
    batch = engine.batch(make_method("autoregressive"))
    batch.add(PROMPTS[0], RequestConfig(max_new_tokens=20))
    batch.step()
    fed = []
    hook = target.register_forward_pre_hook(lambda m, args, kwargs: fed.append(tuple(kwargs["input_ids"].shape)),
                                            with_kwargs=True)
    prompts = [PROMPTS[2] * 3, PROMPTS[1], PROMPTS[2] * 3 + [5], PROMPTS[0]]  # 33, 2, 34 and 5 tokens
    joined = [batch.add(p, RequestConfig(max_new_tokens=6)) for p in prompts]
    batch.step()
    hook.remove()
    assert sorted(fed[:-1]) == [(1, 1), (1, 4), (2, 33)]  # short ones alone, the two long ones together; then the round
    while batch.active:
        batch.step()
    for p, r in zip(prompts, joined):
        assert r.output == hf_greedy(target, p, 6)


def test_a_fresh_batch_of_very_different_prompt_lengths_is_fed_in_groups(target, close_draft):
    """A fresh batch whose prompts would share one pass mostly as padding feeds them like joining prompts, in
    groups of similar length, to both models; prompts of similar length still share the first round's pass."""
    engine = make_engine(target, close_draft)
    batch = engine.batch(make_method("fixed:3"))
    prompts = [PROMPTS[2] * 3, PROMPTS[1], PROMPTS[2] * 3 + [5]]  # 33, 2 and 34 tokens
    requests = [batch.add(p, RequestConfig(max_new_tokens=8)) for p in prompts]
    fed = []
    hooks = [m.model.embed_tokens.register_forward_pre_hook(
        lambda e, args: fed.append((e is target.model.embed_tokens, tuple(args[0].shape)))) for m in (target, close_draft)]
    batch.step()
    target_fed, draft_fed = ([shape for is_target, shape in fed if is_target == t] for t in (True, False))
    assert sorted(target_fed[:2]) == [(1, 1), (2, 33)] and target_fed[2] == (3, 4)  # apart, then the round's block
    assert sorted(draft_fed[:2]) == [(1, 1), (2, 33)] and draft_fed[2] == (3, 1)
    fed.clear()
    similar = engine.batch(make_method("fixed:3"))
    for p in prompts[::2]:
        similar.add(p, RequestConfig(max_new_tokens=8))
    similar.step()
    for hook in hooks:
        hook.remove()
    assert fed[0] == (False, (2, 34)) and (True, (2, 34 + 3)) in fed  # one pass each, inside the round
    while batch.active:
        batch.step()
    for p, r in zip(prompts, requests):
        assert r.output == hf_greedy(target, p, 8)


def test_a_draft_that_has_seen_none_of_the_running_requests_is_fed_apart_too(target, close_draft):
    """Requests that joined during target-only rounds, once the rows the draft had seen are gone, are still fed
    apart (grouped by length), not in one round forward padded to the longest of them."""
    engine = make_engine(target, close_draft)
    method, cap = load_capped(make_method("fixed:3"))
    batch = engine.batch(method)
    first = batch.add(PROMPTS[0], RequestConfig(max_new_tokens=30))
    batch.step()
    cap.cap = 0
    late = [batch.add(PROMPTS[2] * 2, RequestConfig(max_new_tokens=8)), batch.add(PROMPTS[1], RequestConfig(max_new_tokens=8))]
    batch.step()
    batch.cancel(first)
    batch.step()  # still target-only: the draft has seen neither of the two
    assert batch.draft.unfed_rows() == [0, 1]
    fed = []
    hook = close_draft.model.embed_tokens.register_forward_pre_hook(lambda e, args: fed.append(tuple(args[0].shape)))
    cap.cap = None
    batch.step()
    hook.remove()
    assert sorted(fed[:2]) == [(1, 3), (1, 23)] and fed[2] == (2, 1)  # each alone (prompt + 2 emitted), then the round
    assert batch.last_round.draft_fill_tokens == 3 + 23 and batch.last_round.draft_fill_s > 0  # the load rule's f
    while batch.active:
        batch.step()
    assert late[0].output == hf_greedy(target, PROMPTS[2] * 2, 8) and late[1].output == hf_greedy(target, PROMPTS[1], 8)
