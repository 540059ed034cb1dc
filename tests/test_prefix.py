"""The prefix cache: prompts that start as earlier ones did are fed only from where they part, output unchanged."""

import pytest
import torch

from specadapt.engine import RequestConfig, SpeculativeEngine
from specadapt.errors import SpecAdaptError
from specadapt.methods import make_method
from specadapt.models.prefix import BLOCK, PrefixStore
from specadapt.models.runner import ModelRunner
from specadapt.serve import ServeSettings

from conftest import IdTokenizer, hf_greedy

SHARED = list(range(3, 30))  # 27 tokens every prompt below starts with (a system turn): 24 of them in whole blocks
PROMPTS = [SHARED + [30, 31, 2], SHARED + [5, 1], SHARED + [6, 16, 26, 36, 46, 7, 8, 9, 10, 11], SHARED[:20] + [40]]


def kv(n: int, start: float = 0.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Made-up keys and values of n tokens for two layers: token t's are all start + t."""
    values = start + torch.arange(n, dtype=torch.float32)[None, :, None].expand(2, n, 4)
    return [(values.clone(), -values.clone()) for _ in range(2)]


def test_the_store_finds_the_longest_stored_prefix_in_whole_blocks():
    store = PrefixStore(max_tokens=64)
    store.put(list(range(20)), kv(20))  # 16 tokens kept: two blocks
    assert store.match(list(range(20))) == 16
    assert store.match(list(range(15)) + [99] * 10) == BLOCK  # parts at token 15: one whole block
    assert store.match(list(range(20)), limit=12) == BLOCK
    assert store.match([1] + list(range(1, 20))) == 0
    keys, values = store.get(list(range(20)) + [7], 16)[1]
    assert keys.shape == (2, 16, 4) and keys[0, :, 0].tolist() == list(range(16)) and torch.equal(values, -keys)
    assert (store.hits, store.reused_tokens) == (1, 16)
    store.clear()
    assert store.match(list(range(20))) == 0 and (store.hits, store.reused_tokens) == (0, 0)


def test_the_least_recently_used_sequence_leaves_and_a_prefix_another_holds_stays():
    store = PrefixStore(max_tokens=40)
    a, b, c = list(range(16)), list(range(8)) + [50] * 8, [60] * 16
    store.put(a, kv(16))
    store.put(b, kv(16, start=100.0))  # shares a's first block; the newest entry serves it
    store.get(a, 16)  # a is used again: b is now the least recent
    store.put(c, kv(16))  # 48 tokens > 40: b leaves
    assert store.match(b) == BLOCK  # its first block is a's too, and a still holds it
    assert store.get(b, BLOCK)[0][0][0, :, 0].tolist() == list(range(8))  # a's values, not b's (a is used again)
    store.put([70] * 16, kv(16))  # c, the least recent now, leaves
    assert store.match(c) == 0 and store.match(a) == 16
    store.put([80] * 16, kv(16))  # then a, and its prefixes with it
    assert store.match(a) == 0 and store.match(b) == 0


def test_a_row_started_from_a_stored_prefix_computes_what_the_prompt_fed_alone_computes(target):
    store = PrefixStore(max_tokens=256)
    first = ModelRunner(target, prefixes=store)
    first.add_rows(1)
    assert first.fill_rows([0], [PROMPTS[0]]) == [0]  # nothing stored yet: nothing copied
    prompt = PROMPTS[2]
    alone = ModelRunner(target)
    alone.add_rows(1)
    alone.fill_rows([0], [prompt])
    expected, _ = alone.forward(torch.tensor([[7]]))
    runner = ModelRunner(target, prefixes=store)
    runner.add_rows(2)
    assert runner.reusable(prompt) == 24
    assert runner.fill_rows([1, 0], [prompt, [1, 2, 3]]) == [24, 0]
    assert int(runner.mask[1].sum()) == len(prompt)  # the copied prefix and the fed rest, nothing else
    logits, _ = runner.forward(torch.tensor([[5], [7]]))
    torch.testing.assert_close(logits[1], expected[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["autoregressive", "fixed:3", "adaedl+lookup"])
def test_prompts_fed_from_stored_prefixes_give_the_targets_greedy_output(target, close_draft, method):
    engine = SpeculativeEngine(target, close_draft, IdTokenizer(), [], prefix_cache_tokens=512)
    for prompt in PROMPTS:  # one after another, as a server's requests
        assert engine.generate([prompt], make_method(method), RequestConfig(max_new_tokens=12))[0].token_ids == \
            hf_greedy(target, prompt, 12)
    assert engine.prefixes["target"].reused_tokens == 24 + 24 + 16  # every prompt after the first: its whole
    # blocks of SHARED (the last one's 20: 16)
    results = engine.generate(PROMPTS, make_method(method), RequestConfig(max_new_tokens=12))  # and together
    assert [r.token_ids for r in results] == [hf_greedy(target, p, 12) for p in PROMPTS]
    # each was fed before: all its whole blocks are stored but the last token's (only PROMPTS[2] has one past 24)
    assert [r.stats.cached_prompt_tokens for r in results] == [24, 24, 32, 16]
    batch = engine.batch(make_method(method), early_first_token=True)  # and joining a running batch
    running = batch.add(PROMPTS[2][::-1], RequestConfig(max_new_tokens=20))
    batch.step()
    joined = batch.add(SHARED + [12, 13, 14], RequestConfig(max_new_tokens=10))
    while batch.active:
        batch.step()
    assert running.output == hf_greedy(target, PROMPTS[2][::-1], 20)
    assert joined.output == hf_greedy(target, SHARED + [12, 13, 14], 10)


def test_the_draft_is_fed_only_what_its_store_lacks_and_the_load_rule_is_told(target, close_draft):
    engine = SpeculativeEngine(target, close_draft, IdTokenizer(), [], prefix_cache_tokens=512)
    engine.generate([PROMPTS[0]], make_method("fixed:3"), RequestConfig(max_new_tokens=6))  # stores SHARED for both
    batch = engine.batch(make_method("fixed:3"), early_first_token=True)
    request = batch.add(PROMPTS[2], RequestConfig(max_new_tokens=12))
    batch.step()  # the first round only prefills the target
    assert request.draft_reused == 24 and request.draft_unfed
    batch.step()  # the draft is fed apart: the prompt and the first token but the last (the round feeds it), less 24
    assert batch.last_round.draft_fill_tokens == len(PROMPTS[2]) + 1 - 1 - 24


def test_a_negative_prefix_cache_is_refused(target):
    with pytest.raises(SpecAdaptError, match=r"^the prefix cache must hold >= 0 tokens \(0: none\), got -1\.$"):
        SpeculativeEngine(target, None, IdTokenizer(), [], prefix_cache_tokens=-1)
    with pytest.raises(SpecAdaptError, match=r"^prefix_cache_tokens must be >= 0, got -1\.$"):
        ServeSettings(prefix_cache_tokens=-1)
