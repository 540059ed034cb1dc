"""SpecDec++ head training: labels, loss, token mixing, alignment, the pipeline, resume, tune-head, errors."""

from __future__ import annotations

import io
import json
import math
import random
import shutil
from types import SimpleNamespace

import pytest
import torch
from accelerate import PartialState
from conftest import make_engine, perturbed_copy, save_tiny_checkpoint, tiny_llama

from specadapt.engine import RequestConfig
from specadapt.errors import SpecAdaptError
from specadapt.heads import (
    DRAFT_FEATURES,
    AcceptanceHead,
    TrainHeadConfig,
    load_head,
    read_head_config,
    save_head,
    train_head,
    tune_head,
)
from specadapt.heads import data as head_data
from specadapt.heads.data import (
    label_path,
    last_hidden,
    load_labels,
    sample_responses,
    soft_labels,
    teacher_forced_labels,
)
from specadapt.heads.report import calibration_table, roc_auc, weighted_optimum_observed
from specadapt.heads.trainer import (
    CachedHiddenDataset,
    HeadTrainingModule,
    MixingCollator,
    SequenceDataset,
    collate_cached,
    weighted_soft_bce,
)
from specadapt.io import read_jsonl_tolerant
from specadapt.methods import Method, MethodEntry, make_method
from specadapt.policies.fixed import FixedLength
from specadapt.sources import (
    HUMANEVAL_TRAIN_RANGE,
    load_source,
    read_jsonl_prompts,
    sharegpt_records,
)

WORDS = [f"w{i}" for i in range(60)]  # word-level vocabulary: ids 2..61 (0 = <unk>, 1 = </s>)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    """Target and draft checkpoints sharing a word-level tokenizer; the draft is a noisy copy (varied acceptance)."""
    root = tmp_path_factory.mktemp("pair")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    save_tiny_checkpoint(root / "draft", 0, WORDS)
    from transformers import LlamaForCausalLM

    target = LlamaForCausalLM.from_pretrained(root / "target")
    draft = perturbed_copy(target, 0.5)
    draft.config.eos_token_id = 1
    draft.generation_config.eos_token_id = 1
    draft.save_pretrained(root / "draft")
    return root


def write_prompts(path, n: int, with_response: bool = True, seed: int = 0) -> str:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            row = {"prompt": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))}
            if with_response:
                row["response"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "p.jsonl", 14)


def config_for(pair_dir, prompts_file, out, **kw) -> TrainHeadConfig:
    settings = {
        "output": str(out),
        "target": str(pair_dir / "target"),
        "draft": str(pair_dir / "draft"),
        "data": (prompts_file,),
        "num_prompts": 10,
        "dev_fraction": 0.2,
        "responses": "dataset",
        "max_response_tokens": 12,
        "epochs": 2,
        "batch_size": 2,
        "dtype": "float32",
        "device": "cpu",
        "progress": False,
    }
    settings.update(kw)
    return TrainHeadConfig(**settings)


def error_of(fn) -> str:
    with pytest.raises(SpecAdaptError) as info:
        fn()
    return str(info.value)


# ---------------------------------------------------------------- labels


def test_soft_labels_hand_worked():
    # y = min(1, p/q): 0.25/0.5 = 0.5; 0.6/0.3 = 2 -> 1; 0.1/0.4 = 0.25; p = q -> 1.
    p = torch.tensor([0.25, 0.6, 0.1, 0.3])
    q = torch.tensor([0.5, 0.3, 0.4, 0.3])
    assert soft_labels(p.log(), q.log()).tolist() == pytest.approx([0.5, 1.0, 0.25, 1.0])


class MarkovLM:
    """A fake causal LM over 4 tokens: the next-token distribution depends on the current token only.

    Its hidden state at a position is the one-hot of the token there, so tests can see which
    position a stored hidden state came from."""

    def __init__(self, table: list[list[float]]) -> None:
        self.logits = torch.tensor(table).clamp_min(1e-30).log()
        self.device = torch.device("cpu")

    def __call__(self, input_ids, logits_to_keep=0, output_hidden_states=False, **_):
        ids = input_ids[0]
        logits = self.logits[ids][None]
        hidden = torch.nn.functional.one_hot(ids, 4).float()[None] * 10 + torch.arange(len(ids)).float()[None, :, None]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits, hidden_states=(hidden,))


def test_teacher_forced_labels_hand_worked():
    # The draft distribution for response token t comes from token t-1 (the prefix X_<t).
    Q = [[0.0, 1.0, 0.0, 0.0],  # after token 0 the draft surely says 1
         [0.0, 0.0, 0.5, 0.5],  # after 1: 2 or 3, half each
         [0.0, 0.0, 0.0, 1.0],  # after 2: surely 3
         [1.0, 0.0, 0.0, 0.0]]
    P = [[0.1, 0.3, 0.6, 0.0],
         [0.0, 0.1, 0.7, 0.2],
         [0.0, 0.0, 0.1, 0.9],
         [0.5, 0.5, 0.0, 0.0]]
    prompt, response = [3, 0], [1, 2, 0]  # the target's tokens X = 1, 2, 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        out = teacher_forced_labels(MarkovLM(Q), MarkovLM(P), prompt, response, temperature=1.0, mix_ratio=0.0, generator=g)
        y2 = 1.0 if out.draft_tokens[1] == 2 else 0.4  # Y=2: min(1, .7/.5) = 1;  Y=3: .2/.5 = .4
        # Y1 = 1 (from token 0): y = .3/1;  Y3 = 3 (from token 2): y = .9/1.
        assert out.draft_tokens[[0, 2]].tolist() == [1, 3]
        assert out.labels.tolist() == pytest.approx([0.3, y2, 0.9])
        assert out.logq.exp().tolist() == pytest.approx([1.0, 0.5, 1.0])
        assert out.input_ids.tolist() == prompt + response and out.prompt_len == 2
    # Greedy labels: Y = argmax q (first on ties); y = 1 iff the target's argmax agrees:
    # after 0: 1 vs 2 -> 0; after 1: 2 vs 2 -> 1; after 2: 3 vs 3 -> 1.
    out = teacher_forced_labels(MarkovLM(Q), MarkovLM(P), prompt, response, temperature=0.0, mix_ratio=0.0)
    assert out.draft_tokens.tolist() == [1, 2, 3] and out.labels.tolist() == [0.0, 1.0, 1.0]


def test_cached_hidden_states_are_at_the_draft_token_positions():
    Q = [[0.25] * 4] * 4
    prompt, response = [3, 0, 1], [2, 2, 0, 1, 3, 3, 0, 2]
    g = torch.Generator().manual_seed(1)
    out = teacher_forced_labels(MarkovLM(Q), MarkovLM(Q), prompt, response, mix_ratio=0.5, generator=g)
    mask = out.draft_mask
    assert 0 < int(mask.sum()) < len(response)
    mixed = out.mixed_ids()
    # Training input: the prompt, then Y_t where the mask is set and X_t elsewhere.
    assert mixed[:3].tolist() == prompt
    assert torch.equal(mixed[3:][mask], out.draft_tokens[mask].long())
    assert torch.equal(mixed[3:][~mask], torch.tensor(response)[~mask])
    # One stored row per draft-token position: the state at that position (token one-hot * 10 + position).
    positions = torch.nonzero(mask).flatten() + len(prompt)
    expected = torch.nn.functional.one_hot(mixed[positions].long(), 4).float() * 10 + positions[:, None].float()
    assert out.hidden.shape == (int(mask.sum()), 4)
    assert torch.allclose(out.hidden.float(), expected)
    # "producing": one row per response position, the state at the position before Y_t (which produced it).
    out = teacher_forced_labels(MarkovLM(Q), MarkovLM(Q), prompt, response, mix_ratio=0.5, generator=g,
                                head_input="producing")
    positions = torch.arange(len(response)) + len(prompt) - 1
    seq = torch.tensor(prompt + response)
    expected = torch.nn.functional.one_hot(seq[positions], 4).float() * 10 + positions[:, None].float()
    assert bool(out.draft_mask.all()) and torch.allclose(out.hidden.float(), expected)
    assert torch.allclose(out.entropy, torch.full((len(response),), math.log(4)))  # uniform q over 4 tokens


# ---------------------------------------------------------------- loss and token mixing


def test_loss_equals_the_formula():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0], [0.5, 0.5], [-3.0, 1.0]])
    y = torch.tensor([1.0, 0.0, 0.3, 0.9])
    w = 6.0
    s = [math.exp(b) / (math.exp(a) + math.exp(b)) for a, b in logits.tolist()]
    num = sum(w * (1 - yi) * -math.log(1 - si) + yi * -math.log(si) for si, yi in zip(s, y.tolist()))
    den = sum(w * (1 - yi) + yi for yi in y.tolist())
    assert float(weighted_soft_bce(logits, y, w)) == pytest.approx(num / den, rel=1e-6)
    # w = 1 is the plain soft BCE, averaged.
    plain = sum(-(yi * math.log(si) + (1 - yi) * math.log(1 - si)) for si, yi in zip(s, y.tolist())) / 4
    assert float(weighted_soft_bce(logits, y, 1.0)) == pytest.approx(plain, rel=1e-6)
    empty = weighted_soft_bce(torch.zeros(0, 2, requires_grad=True), torch.zeros(0))
    assert float(empty.detach()) == 0.0 and empty.requires_grad


def test_weighted_optimum_inverts_the_minimiser():
    # The loss is minimised at s = y / (y + w (1 - y)); the plot's reference curve inverts that.
    for y in (0.1, 0.5, 0.9):
        s = y / (y + 6 * (1 - y))
        assert weighted_optimum_observed(s, 6.0) == pytest.approx(y)


def test_mixing_collator_marks_exactly_the_draft_token_positions():
    rows = [
        {"input_ids": torch.tensor([5, 6, 7, 8, 9, 10, 11]), "prompt_len": 2,
         "draft_tokens": torch.tensor([20, 21, 22, 23, 24]), "labels": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])},
        {"input_ids": torch.tensor([5, 30, 31]), "prompt_len": 1,
         "draft_tokens": torch.tensor([40, 41]), "labels": torch.tensor([0.6, 0.7])},
    ]
    batch = MixingCollator(0.5, torch.Generator().manual_seed(3))(rows)
    ids, mask, labels, attention = batch["input_ids"], batch["loss_mask"], batch["labels"], batch["attention_mask"]
    assert ids.shape == (2, 7) and attention[1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    for i, r in enumerate(rows):
        P, n = r["prompt_len"], len(r["input_ids"])
        assert not mask[i, :P].any() and not mask[i, n:].any()  # never the prompt or the padding
        resp = ids[i, P:n]
        m = mask[i, P:n]
        assert torch.equal(resp[m], r["draft_tokens"][m]) and torch.equal(resp[~m], r["input_ids"][P:][~m])
        assert torch.equal(labels[i, P:n][m], r["labels"][m])
    assert mask.any() and (~mask[0, 2:7]).any()
    # mix_ratio 0: every response position is a draft token.
    all_draft = MixingCollator(0.0)(rows)["loss_mask"]
    assert all_draft[0].tolist() == [False, False] + [True] * 5 and all_draft[1].tolist() == [False, True, True] + [False] * 4


def test_loss_only_on_draft_token_positions():
    torch.manual_seed(0)
    draft = tiny_llama(1)
    module = HeadTrainingModule(AcceptanceHead(32, 1), 6.0, draft=draft)
    assert [n for n, _ in module.named_parameters()] == [n for n, _ in module.head.named_parameters(prefix="head")]
    rows = SequenceDataset(
        [teacher_forced_labels(draft, tiny_llama(0), [1, 2, 3], list(range(10, 22)), mix_ratio=0.0,
                               generator=torch.Generator().manual_seed(0), want_hidden=False)]
    ).rows
    batch = MixingCollator(0.4, torch.Generator().manual_seed(5))(rows)
    assert batch["loss_mask"].any() and not batch["loss_mask"][0, 3:].all()
    with torch.no_grad():
        base = float(module(**batch)["loss"])
        other = dict(batch, labels=batch["labels"].clone())
        other["labels"][~batch["loss_mask"]] = 0.987  # target-token, prompt and padding positions: ignored
        assert float(module(**other)["loss"]) == base
        other["labels"][batch["loss_mask"]] = 0.0  # draft-token positions: counted
        assert float(module(**other)["loss"]) != base
        # The cached path gives the same loss from the stored rows (the draft's state at those positions).
        hidden = last_hidden(draft, batch["input_ids"][:1])[batch["loss_mask"][0]]
        cached = module(labels=batch["labels"][batch["loss_mask"]], hidden=hidden)
        assert float(cached["loss"]) == pytest.approx(base, rel=1e-5)


def test_cached_dataset_keeps_only_draft_positions():
    items = []
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        items.append(teacher_forced_labels(tiny_llama(1), tiny_llama(0), [1, 2], list(range(5, 15)), mix_ratio=0.3, generator=g))
    data = CachedHiddenDataset(items)
    batch = collate_cached([data[i] for i in range(len(data))])
    n = sum(int(it.draft_mask.sum()) for it in items)
    assert batch["hidden"].shape == (n, 32) and batch["labels"].shape == (n,)
    assert torch.equal(batch["labels"], torch.cat([it.labels[it.draft_mask] for it in items]))
    items[0].hidden = None
    assert "hidden='recompute'" in error_of(lambda: CachedHiddenDataset(items))


# ---------------------------------------------------------------- the one-step lag against the engine


def test_stored_hidden_and_labels_match_what_the_engine_sees():
    """Round 1 of greedy decoding: the policy's DraftStep.hidden at step t+1 is the state for token t
    (one-step lag); the stored head input for label y_t must be that very state, and y_t the target's verdict."""
    target = tiny_llama(0)
    draft = perturbed_copy(target, 0.3)
    prompt, k = [3, 9, 27, 14], 7

    seen: dict[str, list] = {"hidden": [], "tokens": [], "accepted": None}

    class Recorder(FixedLength):
        needs_hidden = True

        def should_stop(self, step):
            if self.rounds == 0:
                seen["hidden"].append(step.hidden[0].clone())
                seen["tokens"].append(int(step.tokens[0]))
            return super().should_stop(step)

        def observe(self, outcome):
            if self.rounds == 0:
                seen["accepted"] = outcome.accepted_mask[0].tolist()
            self.rounds += 1

    policy = Recorder(k)
    policy.rounds = 0
    method = Method(MethodEntry("recorder", Recorder, "", True, None), policy, "recorder")
    make_engine(target, draft).generate([prompt], method, RequestConfig(max_new_tokens=2 * k))
    drafted = seen["tokens"]
    assert len(drafted) == k

    # Teacher-forced over the draft's own greedy block, all positions draft tokens.
    out = teacher_forced_labels(draft, target, prompt, drafted, temperature=0.0, mix_ratio=0.0)
    assert out.draft_tokens.tolist() == drafted and bool(out.draft_mask.all())
    close = {"rtol": 2e-3, "atol": 2e-3}  # stored as fp16
    for t in range(1, k):  # stored row t-1 (token t) == the engine's hidden at step t+1
        assert torch.allclose(out.hidden[t - 1].float(), seen["hidden"][t], **close), t
    assert not torch.allclose(out.hidden[0].float(), seen["hidden"][0], **close)  # not the state that predicted it
    # Greedy labels = the target's per-token verdicts; the engine accepts up to the first rejection.
    verdicts = out.labels.bool().tolist()
    expected = [all(verdicts[: i + 1]) for i in range(k)]
    assert seen["accepted"] == expected


def test_producing_inputs_match_what_the_engine_sees():
    """The no-lag head input: for label y_t, the state that produced token t and the features of its
    distribution, exactly what the policy gets at step t (step 1 included), with every position labelled."""
    from specadapt.heads import distribution_features

    target = tiny_llama(0)
    draft = perturbed_copy(target, 0.3)
    prompt, k = [3, 9, 27, 14], 7
    seen: dict[str, list] = {"hidden": [], "tokens": [], "features": [], "rounds": []}

    class Recorder(FixedLength):
        needs_hidden = True

        def should_stop(self, step):
            if not seen["rounds"]:  # round 1 only
                seen["hidden"].append(step.hidden[0].clone())
                seen["tokens"].append(int(step.tokens[0]))
                seen["features"].append(distribution_features(step.probs, step.tokens)[0])
            return super().should_stop(step)

        def observe(self, outcome):
            seen["rounds"].append(outcome)

    method = Method(MethodEntry("recorder", Recorder, "", True, None), Recorder(k), "recorder")
    make_engine(target, draft).generate([prompt], method, RequestConfig(max_new_tokens=2 * k))
    drafted = seen["tokens"]
    assert len(drafted) == k

    out = teacher_forced_labels(draft, target, prompt, drafted, temperature=0.0, mix_ratio=0.5,
                                generator=torch.Generator().manual_seed(0), head_input="producing")
    assert out.draft_tokens.tolist() == drafted and bool(out.draft_mask.all())  # no mixing
    hidden, features = out.head_inputs()
    assert hidden.shape == (k, 32) and features.shape == (k, len(DRAFT_FEATURES))
    for t in range(k):
        assert torch.allclose(hidden[t].float(), seen["hidden"][t], rtol=2e-3, atol=2e-3), t
        assert torch.allclose(features[t], seen["features"][t], rtol=1e-4, atol=1e-4), t
    # The consumed (paper) input for the same labels is a different state.
    lagged = teacher_forced_labels(draft, target, prompt, drafted, temperature=0.0, mix_ratio=0.0)
    assert lagged.entropy is None and lagged.head_inputs()[1] is None
    assert not torch.allclose(lagged.hidden[0].float(), hidden[0].float(), rtol=2e-3, atol=2e-3)


def test_greedy_draft_probs_are_fp32_for_a_bf16_draft():
    """The features are computed from fp32 probabilities, as in the label stage: in bf16 a confident token's
    q rounds to 1 and log(1 - q) collapses."""
    dtypes = []

    class Recorder(FixedLength):
        def should_stop(self, step):
            dtypes.append(step.probs.dtype)
            return super().should_stop(step)

    target = tiny_llama(0).to(torch.bfloat16)
    method = Method(MethodEntry("recorder", Recorder, "", True, None), Recorder(3), "recorder")
    make_engine(target, perturbed_copy(tiny_llama(0), 0.3).to(torch.bfloat16)).generate(
        [[3, 9, 27]], method, RequestConfig(max_new_tokens=6))
    assert dtypes and set(dtypes) == {torch.float32}


# ---------------------------------------------------------------- sources


def test_sharegpt_truncated_json_keeps_complete_records():
    convs = [
        {"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},  # skipped
        {"id": "c", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        {"id": "d", "conversations": [{"from": "human", "value": "cut"}, {"from": "gpt", "value": "off here"}]},
    ]
    text = json.dumps(convs, indent=2)
    cut = text[: text.index("off here")]  # the file ends inside the last record
    records = sharegpt_records(io.StringIO(cut), limit=10)
    assert [(r.id, r.prompt, r.response) for r in records] == [("sharegpt/a", "hi", "hello"), ("sharegpt/c", "2+2?", "4")]
    assert len(sharegpt_records(io.StringIO(text), limit=2)) == 2
    assert len(sharegpt_records(io.StringIO(text), limit=10)) == 3


def test_builtin_sources():
    gsm = load_source("gsm8k")
    assert len(gsm) == 1000 and "<<" not in gsm[0].response and gsm[0].response.endswith("#### 72")
    he = load_source("humaneval")
    lo, hi = HUMANEVAL_TRAIN_RANGE
    assert [r.id for r in (he[0], he[-1])] == [f"HumanEval/{lo}", f"HumanEval/{hi}"] and len(he) == hi - lo + 1
    assert all(r.chat is False and r.response for r in he)


def test_user_prompt_file_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("")
    assert "holds no prompts" in error_of(lambda: read_jsonl_prompts(path))
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    assert "line 2" in error_of(lambda: read_jsonl_prompts(path))
    path.write_text('{"prompt": "ok"\n')
    assert "line 1 is not valid JSON" in error_of(lambda: read_jsonl_prompts(path))


# ---------------------------------------------------------------- ROC AUC and calibration


def test_roc_auc_rank_formula():
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0.0, 0.0, 1.0, 1.0])) == pytest.approx(0.75)
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])) == pytest.approx(0.5)  # a tie counts half
    assert roc_auc(torch.tensor([0.2, 0.3]), torch.tensor([1.0, 1.0])) is None
    # Soft labels = weighted pairs; compare with brute force over all pairs.
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    y = torch.rand(40, generator=g).double()
    num = sum(
        y[i] * (1 - y[j]) * (1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0) for i in range(40) for j in range(40)
    )
    assert roc_auc(s, y) == pytest.approx(float(num / (y.sum() * (1 - y).sum())), rel=1e-6)


def test_calibration_table_buckets():
    table = calibration_table(torch.tensor([0.05, 0.07, 0.95, 1.0]), torch.tensor([0.0, 1.0, 1.0, 0.5]), bins=10)
    assert table[0]["count"] == 2 and table[0]["observed_acceptance"] == pytest.approx(0.5)
    assert table[9]["count"] == 2 and table[9]["mean_predicted"] == pytest.approx(0.975)
    assert sum(r["count"] for r in table) == 4


# ---------------------------------------------------------------- the pipeline end to end


def assert_decodes_like_the_target(pair_dir, head_dir, device: str = "cpu"):
    """The decoder runs with the head on ``device``, and its greedy output equals the target's own.
    Returns the method, the result and the target, for further checks."""
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(pair_dir / "target").eval().to(device)
    draft = AutoModelForCausalLM.from_pretrained(pair_dir / "draft").eval().to(device)
    method = make_method("specdecpp", head=str(head_dir), threshold=0.5)
    engine = make_engine(target, draft)
    assert engine.device.type == torch.device(device).type
    r = engine.generate([[5, 6, 7]], method, RequestConfig(max_new_tokens=12))[0]
    auto = make_engine(target, None).generate([[5, 6, 7]], make_method("autoregressive"), RequestConfig(max_new_tokens=12))[0]
    assert r.token_ids == auto.token_ids and r.stats.drafted > 0
    return method, r, target


def test_end_to_end_tiny_run_gives_a_head_the_engine_uses(pair_dir, prompts_file, tmp_path):
    result = train_head(config_for(pair_dir, prompts_file, tmp_path / "out", responses="target"))
    out = result.output
    for name in ("report.json", "report.md", "calibration.png", "loss.png", "data/prompts.jsonl", "data/settings.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "data" / "labels").glob("*.safetensors"))) == 10
    config = read_head_config(result.head_dir)
    assert config["hidden_size"] == 32 and config["num_blocks"] == 3 and config["shared_blocks"] is True
    assert config["draft"] == str((pair_dir / "draft").resolve()) and config["target"] == str((pair_dir / "target").resolve())
    assert config["recipe"]["mix_ratio"] == 0.15 and config["recipe"]["reject_weight"] == 6.0
    assert config["recipe"]["responses"] == "target"
    report = json.loads((out / "report.json").read_text())
    assert report["training"]["steps"] > 0 and report["training"]["curves"]["dev"]
    assert report["data"]["prompts"]["train"] == 8 and report["data"]["prompts"]["dev"] == 2

    assert_decodes_like_the_target(pair_dir, result.head_dir)
    assert isinstance(load_head(result.head_dir), AcceptanceHead)

    # A finished head is not replaced without overwrite; with it, the data is reused and training reruns.
    assert "already holds a finished head" in error_of(lambda: train_head(config_for(pair_dir, prompts_file, out, responses="target")))
    stamp = (out / "data" / "labels" / "000000.safetensors").stat().st_mtime_ns
    stored = json.loads((out / "data" / "settings.json").read_text())
    del stored["head_input"]  # data made before the setting existed counts as its default, "consumed"
    (out / "data" / "settings.json").write_text(json.dumps(stored))
    train_head(config_for(pair_dir, prompts_file, out, responses="target", overwrite=True, seed=0))
    assert (out / "data" / "labels" / "000000.safetensors").stat().st_mtime_ns == stamp
    # Other data settings: refused, naming the setting.
    (out / "head" / "config.json").unlink()
    msg = error_of(lambda: train_head(config_for(pair_dir, prompts_file, out, responses="target", mix_ratio=0.3)))
    assert "mix_ratio" in msg and "--overwrite" in msg


def test_producing_head_end_to_end(pair_dir, prompts_file, tmp_path):
    result = train_head(config_for(pair_dir, prompts_file, tmp_path / "out", head_input="producing", num_blocks=1))
    config = read_head_config(result.head_dir)
    assert config["input"] == "producing" and config["recipe"]["head_input"] == "producing"
    assert config["recipe"]["mix_ratio"] is None
    item, _ = load_labels(label_path(result.output / "data" / "labels", 0))
    assert bool(item.draft_mask.all()) and item.entropy.shape == item.labels.shape == (item.hidden.shape[0],)
    report = json.loads((result.output / "report.json").read_text())
    assert report["data"]["train_tokens"] == sum(  # every response position of the train split is a loss position
        len(load_labels(p)[0].labels) for p in (result.output / "data" / "labels").glob("*.safetensors")
        if load_labels(p)[1]["split"] == "train")
    assert_decodes_like_the_target(pair_dir, result.head_dir)
    # A "features" head trains on the same data (no label is recomputed); a "consumed" one does not take it.
    labels = {p.name: p.stat().st_mtime_ns for p in (result.output / "data" / "labels").glob("*.safetensors")}
    features = train_head(config_for(pair_dir, prompts_file, result.output, head_input="features", num_blocks=0,
                                     reject_weight=1.0, overwrite=True))
    assert {p.name: p.stat().st_mtime_ns for p in (result.output / "data" / "labels").glob("*.safetensors")} == labels
    config = read_head_config(features.head_dir)
    assert config["input"] == "features" and config["features"] == list(DRAFT_FEATURES) and config["format_version"] == 3
    assert load_head(features.head_dir).out.weight.shape == (2, len(DRAFT_FEATURES))
    assert_decodes_like_the_target(pair_dir, features.head_dir)
    (result.head_dir / "config.json").unlink()
    msg = error_of(lambda: train_head(config_for(pair_dir, prompts_file, result.output, num_blocks=1)))
    assert "head_input: 'producing' -> 'consumed'" in msg and "--overwrite" in msg


def test_recompute_mode_and_training_resume(pair_dir, prompts_file, tmp_path):
    cfg = config_for(pair_dir, prompts_file, tmp_path / "out", hidden="recompute", num_blocks=1, shared_blocks=False)
    first = train_head(cfg)
    item, _ = load_labels(label_path(first.output / "data" / "labels", 0))
    assert item.hidden is None  # recompute mode stores tokens only
    assert read_head_config(first.head_dir)["shared_blocks"] is False
    # A crash after training but before the head was written: the rerun resumes from the checkpoint.
    shutil.rmtree(first.head_dir)
    again = train_head(cfg)
    assert again.report["training"]["resumed_from"] is not None
    assert again.report["training"]["steps"] == first.report["training"]["steps"]
    assert again.report["training"]["best_checkpoint"] == first.report["training"]["best_checkpoint"]


def test_interrupted_label_stage_resumes(pair_dir, prompts_file, tmp_path, monkeypatch):
    cfg = config_for(pair_dir, prompts_file, tmp_path / "out")
    real_save = head_data.save_labels
    calls = {"n": 0}

    def crash_after_three(*args, **kw):
        if calls["n"] == 3:
            raise KeyboardInterrupt
        calls["n"] += 1
        real_save(*args, **kw)

    monkeypatch.setattr(head_data, "save_labels", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_head(cfg)
    labels_dir = tmp_path / "out" / "data" / "labels"
    done = sorted(p.name for p in labels_dir.glob("*.safetensors"))
    assert len(done) == 3 and not list(labels_dir.glob("*.tmp"))
    stamps = {n: (labels_dir / n).stat().st_mtime_ns for n in done}
    first = {n: load_labels(labels_dir / n)[0] for n in done}

    written = []

    def counting(path, *args, **kw):
        written.append(path.name)
        real_save(path, *args, **kw)

    monkeypatch.setattr(head_data, "save_labels", counting)
    result = train_head(cfg)
    assert len(written) == 7 and not set(written) & set(done)  # only the missing ones were computed
    assert all((labels_dir / n).stat().st_mtime_ns == s for n, s in stamps.items())
    assert (result.head_dir / "config.json").is_file()

    # Per-sequence seeding: a file recomputed from scratch is identical to the one from the interrupted run.
    (labels_dir / done[0]).unlink()
    shutil.rmtree(result.head_dir)
    train_head(cfg)
    again = load_labels(labels_dir / done[0])[0]
    assert torch.equal(again.draft_tokens, first[done[0]].draft_tokens) and torch.equal(again.hidden, first[done[0]].hidden)


def test_interrupted_responses_resume(pair_dir, prompts_file, tmp_path):
    cfg = config_for(pair_dir, prompts_file, tmp_path / "out", responses="target", gen_batch_size=2)
    prompts = [{"index": i, "prompt_ids": [5 + i, 6, 7]} for i in range(6)]
    calls = []

    class FlakyEngine:  # the second batch never finishes
        def generate(self, ids, method, gen):
            calls.append(len(ids))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return [SimpleNamespace(token_ids=[9, 9, 1], finish_reason="eos") for _ in ids]

    class Engine:
        def generate(self, ids, method, gen):
            calls.append(len(ids))
            return [SimpleNamespace(token_ids=[4], finish_reason="length") for _ in ids]

    directory = tmp_path / "responses"
    with pytest.raises(KeyboardInterrupt):
        sample_responses(FlakyEngine(), prompts, directory, cfg, PartialState(), progress=False)
    part = directory / "part-0.jsonl"
    with part.open("a") as f:
        f.write('{"index": 5, "response_ids": [1, 2')  # a line cut off by the crash
    assert sorted(head_data.read_responses(directory)) == [0, 1]
    calls.clear()
    sample_responses(Engine(), prompts, directory, cfg, PartialState(), progress=False)
    assert calls == [2, 2]  # only the four prompts without a response
    responses = head_data.read_responses(directory)
    assert sorted(responses) == list(range(6)) and responses[0] == [9, 9, 1] and responses[5] == [4]
    assert all(json.loads(line) for line in part.read_text().splitlines())  # the broken line was removed
    assert len(read_jsonl_tolerant(part)) == 6


# ---------------------------------------------------------------- tune-head


def test_tune_head_records_the_fastest_threshold(pair_dir, tmp_path):
    head = AcceptanceHead(32, 1)
    folder = save_head(head, tmp_path / "head", extra={"draft": str(pair_dir / "draft"), "target": str(pair_dir / "target"), "note": "kept"})
    prompts = write_prompts(tmp_path / "dev.jsonl", 2, with_response=False)
    from typer.testing import CliRunner

    from specadapt.cli import app

    res = CliRunner().invoke(app, ["tune-head", str(folder), "--prompts", prompts, "--thresholds", "0.4,0.8",
                                   "--min-k", "1,2", "--max-k", "3,20", "--max-new-tokens", "6", "--dtype", "float32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    config = read_head_config(folder)
    assert config["threshold"] in (0.4, 0.8) and config["note"] == "kept"
    tuning = config["threshold_tuning"]
    assert tuning["grid"] == [0.4, 0.8] and tuning["min_k_grid"] == [1, 2] and tuning["max_k_grid"] == [3, 20] and tuning["prompts"] == 2
    assert {(r["threshold"], r["min_k"], r["max_k"]) for r in tuning["results"]} == {
        (h, k, m) for h in (0.4, 0.8) for k in (1, 2) for m in (3, 20)}
    best = max(tuning["results"], key=lambda r: r["tokens_per_s"])
    assert (best["threshold"], best["min_k"], best["max_k"]) == (config["threshold"], config["min_k"], config["max_k"])
    assert all(r["tokens"] > 0 for r in tuning["results"])
    policy = make_method("specdecpp", head=str(folder)).policy
    assert (policy.head, policy.threshold, policy.min_k, policy.max_k) == (str(folder), config["threshold"], config["min_k"], config["max_k"])

    dry = tune_head(folder, prompts_file=prompts, thresholds=[0.6], max_new_tokens=4, dtype="float32", device="cpu",
                    write=False, progress=False)
    assert (dry.best.threshold, dry.best.min_k) == (0.6, 2) and read_head_config(folder)["threshold"] == config["threshold"]


def test_tune_head_by_replay_counts_what_the_engine_does(pair_dir, tmp_path):
    torch.manual_seed(0)
    head = AcceptanceHead(32, 1, input="producing")
    folder = save_head(head, tmp_path / "head", extra={"draft": str(pair_dir / "draft"), "target": str(pair_dir / "target")})
    prompts = write_prompts(tmp_path / "dev.jsonl", 3, with_response=False)
    result = tune_head(folder, prompts_file=prompts, thresholds=[0.4, 0.8], min_ks=[1, 3], max_ks=[3, 20], max_new_tokens=10,
                       dtype="float32", device="cpu", by="replay", progress=False)
    tuning = read_head_config(folder)["threshold_tuning"]
    assert tuning["by"] == "replay" and tuning["grid"] == [0.4, 0.8] and tuning["prompts"] == 3
    config = read_head_config(folder)
    assert (config["threshold"], config["min_k"]) == (result.best.threshold, result.best.min_k) and tuning["anchors"] == ["fixed:2", "fixed:6"]
    assert set(tuning["fixed_k_tokens_per_s"]) == {f"fixed:{k}" for k in range(1, 11)}
    assert tuning["best_fixed_k"] in tuning["fixed_k_tokens_per_s"]
    # The replayed counts are the engine's own (fp32, greedy).
    from specadapt.api import SpecDecoder

    decoder = SpecDecoder.from_pretrained(str(pair_dir / "target"), str(pair_dir / "draft"), dtype="float32", device="cpu")
    ids = [decoder.encode(p["prompt"]) for p in map(json.loads, open(prompts))]
    for run in result.runs:
        engine = [decoder.engine.generate([i], make_method("specdecpp", head=str(folder), threshold=run.threshold, min_k=run.min_k, max_k=run.max_k),
                                          RequestConfig(max_new_tokens=10))[0].stats for i in ids]
        assert (run.stats.rounds, run.stats.drafted, run.stats.accepted) == (
            sum(e.rounds for e in engine), sum(e.drafted for e in engine), sum(e.accepted for e in engine))


def test_tune_head_on_benchmark_prompts_skips_the_reported_ones(pair_dir, tmp_path):
    from specadapt.bench.datasets import load_dataset
    from specadapt.heads.tune import benchmark_prompts

    messages, stops = benchmark_prompts(["humaneval", "mt-bench"], skip=3, count=5)
    humaneval, mt_bench = load_dataset("humaneval", 6, "tune"), load_dataset("mt-bench", 6, "tune")
    # Round-robin over the datasets, each from its 4th example on, as the bench prompts them (stop strings too).
    assert messages == [humaneval[3].messages, mt_bench[3].messages, humaneval[4].messages, mt_bench[4].messages, humaneval[5].messages]
    assert stops == [humaneval[3].stop, (), humaneval[4].stop, (), humaneval[5].stop] and humaneval[3].stop
    assert "the tune split of mt-bench holds only 29 examples after skipping 3" in error_of(
        lambda: benchmark_prompts(["mt-bench"], skip=3, count=78))
    assert "tuning on the test split is refused: tune-head would make choices on the test split" in error_of(
        lambda: benchmark_prompts(["mt-bench"], skip=0, count=2, split="test"))
    assert "skip must be a whole number >= 0" in error_of(lambda: benchmark_prompts(["mt-bench"], skip=-1, count=2))

    from specadapt.api import SpecDecoder

    decoder = SpecDecoder.from_pretrained(str(pair_dir / "target"), str(pair_dir / "draft"), dtype="float32", device="cpu")
    decoder.tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    folder = save_head(AcceptanceHead(32, 1, input="producing"), tmp_path / "head")
    result = tune_head(folder, datasets=["mt-bench"], skip=16, num_prompts=2, thresholds=[0.5], max_new_tokens=4,
                       by="replay", decoder=decoder, progress=False)
    tuning = read_head_config(folder)["threshold_tuning"]
    assert (tuning["datasets"], tuning["skip"], tuning["prompts"]) == (["mt-bench"], 16, 2) and result.best.tokens > 0
    assert "one way" in error_of(lambda: tune_head(folder, datasets=["mt-bench"], prompts=["x"], decoder=decoder))


def test_tune_head_errors(pair_dir, tmp_path):
    small = save_head(AcceptanceHead(16, 1), tmp_path / "small", extra={"draft": str(pair_dir / "draft"), "target": str(pair_dir / "target")})
    prompts = write_prompts(tmp_path / "dev.jsonl", 1, with_response=False)
    msg = error_of(lambda: tune_head(small, prompts_file=prompts, dtype="float32", device="cpu", progress=False))
    assert "hidden size 16" in msg and "hidden size 32" in msg and "--draft" in msg
    good = save_head(AcceptanceHead(32, 1), tmp_path / "good")
    assert "no dev prompts" in error_of(lambda: tune_head(good, progress=False))
    assert "strictly between 0 and 1" in error_of(lambda: tune_head(good, thresholds=[0.5, 1.0], prompts=["x"]))
    assert "min_k values must be integers >= 1" in error_of(lambda: tune_head(good, min_ks=[0, 2], prompts=["x"]))
    assert "max_k values must be integers from the largest min_k (3) to 64" in error_of(
        lambda: tune_head(good, min_ks=[1, 3], max_ks=[2, 20], prompts=["x"]))
    assert "not found" in error_of(lambda: tune_head(tmp_path / "nothing"))
    assert "by must be one of speed, replay" in error_of(lambda: tune_head(good, by="guess", prompts=["x"]))
    assert "greedy decoding" in error_of(lambda: tune_head(good, by="replay", temperature=0.7, prompts=["x", "y"]))
    assert "at least 2 prompts" in error_of(lambda: tune_head(good, by="replay", num_prompts=1, prompts=["x"]))


# ---------------------------------------------------------------- bad input


def test_pair_with_different_tokenizers_is_refused(pair_dir, prompts_file, tmp_path):
    save_tiny_checkpoint(tmp_path / "other", 1, [f"v{i}" for i in range(60)])
    cfg = config_for(pair_dir, prompts_file, tmp_path / "out", draft=str(tmp_path / "other"))
    msg = error_of(lambda: train_head(cfg))
    assert "different tokenizers" in msg
    assert not (tmp_path / "out" / "data" / "prompts.jsonl").exists()


def test_empty_or_unusable_data_is_refused(pair_dir, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no prompts" in error_of(lambda: train_head(config_for(pair_dir, str(empty), tmp_path / "o1")))
    no_resp = write_prompts(tmp_path / "nr.jsonl", 5, with_response=False)
    assert "has none" in error_of(lambda: train_head(config_for(pair_dir, no_resp, tmp_path / "o2")))
    one = write_prompts(tmp_path / "one.jsonl", 1)
    assert "at least 2" in error_of(lambda: train_head(config_for(pair_dir, one, tmp_path / "o3")))
    assert "unknown prompt source" in error_of(lambda: train_head(config_for(pair_dir, "alpaca", tmp_path / "o4")))
    assert "does not exist" in error_of(lambda: train_head(config_for(pair_dir, str(tmp_path / "missing.jsonl"), tmp_path / "o5")))


def test_foreign_output_folder_is_refused(pair_dir, prompts_file, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("x")
    assert "specadapt train-head did not write (thesis.tex)" in error_of(lambda: train_head(config_for(pair_dir, prompts_file, tmp_path / "mine")))


@pytest.mark.parametrize(
    "settings,needle",
    [
        ({"mix_ratio": 1.0}, "mix_ratio must be in [0, 1)"),
        ({"dev_fraction": 0.0}, "dev_fraction"),
        ({"responses": "teacher"}, "responses must be one of"),
        ({"hidden": "disk"}, "hidden must be one of"),
        ({"head_input": "later"}, "head_input must be one of consumed, producing, features"),
        ({"head_input": "producing", "hidden": "recompute"}, "needs hidden='cache'"),
        ({"head_input": "features", "hidden": "recompute"}, "needs hidden='cache'"),
        ({"responses": "target", "response_method": "adasd"}, "lossy"),
        ({"response_method": "nonsense", "responses": "target"}, "unknown method"),
        ({"num_prompts": 1}, "num_prompts"),
        ({"max_steps": 0}, "max_steps"),
        ({"label_temperature": -1.0}, "label_temperature"),
        ({"data": ()}, "no prompt sources"),
    ],
)
def test_bad_settings_fail_fast(settings, needle, tmp_path):
    msg = error_of(lambda: TrainHeadConfig(output=str(tmp_path / "o"), **settings))
    assert needle in msg


def test_cli_train_head(pair_dir, prompts_file, tmp_path):
    from typer.testing import CliRunner

    from specadapt.cli import app

    out = tmp_path / "cli-out"
    args = ["train-head", "-o", str(out), "--target", str(pair_dir / "target"), "--draft", str(pair_dir / "draft"),
            "--data", prompts_file, "--num-prompts", "6", "--dev-fraction", "0.34", "--responses", "dataset",
            "--max-response-tokens", "8", "--max-steps", "3", "--independent-blocks", "--num-blocks", "2",
            "--dtype", "float32", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    config = read_head_config(out / "head")
    assert config["num_blocks"] == 2 and config["shared_blocks"] is False and config["recipe"]["max_steps"] == 3
    assert json.loads((out / "report.json").read_text())["training"]["steps"] == 3
    res = CliRunner().invoke(app, args)  # a finished head: refused with a clear error
    assert isinstance(res.exception, SpecAdaptError) and "--overwrite" in str(res.exception)
