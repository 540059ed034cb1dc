"""Draft distillation: divergences, AdaSPEC's selective mask, the teacher cache, shallow copies, end to end."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
from conftest import crash_at_checkpoint, save_tiny_checkpoint, tiny_llama

from specadapt.errors import SpecAdaptError
from specadapt.distill.train import (
    DistillCollator,
    DistillDataset,
    DistillSettings,
    DistillTrainer,
    TeacherBatch,
    distill_loss,
    num_kept,
    run_distill,
    selective_mask,
    stage_finished,
    token_divergence,
    training_arguments,
)
from specadapt.distill.data import TrainExample
from specadapt.distill.shallow import parse_draft_init, set_trainable, shallow_copy
from specadapt.distill.teacher_cache import (
    TeacherCache,
    build_cache,
    cache_key,
    coarse_student,
    coarse_teacher,
    fkl_gap_bound,
    topk_summary,
)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "big", "red", "blue", "fish", "swims", "in", "sea", "sky", "is"]


def fast_settings(**kw) -> DistillSettings:
    base = {
        "max_steps": 2, "batch_size": 4, "micro_batch_size": 2, "precision": "fp32", "progress": False,
        "device": "cpu", "logging_steps": 1, "cache_top_k": 8,
    }
    return DistillSettings(**{**base, **kw})


# ---------------------------------------------------------------- the selective mask


def test_selective_mask_keeps_exactly_the_top_fraction():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(37, generator=g)
    mask = selective_mask(delta, 0.4)
    assert int(mask.sum()) == math.ceil(0.4 * 37) == 15
    assert delta[mask].min() > delta[~mask].max()  # the largest gaps, nothing else
    # k * n is rounded before the ceiling: 0.7 of 10 keeps 7, not 8; at least one token is kept
    assert num_kept(10, 0.7) == 7 and num_kept(3, 0.01) == 1 and num_kept(0, 0.5) == 0
    assert bool(selective_mask(delta, 1.0).all())


def test_selective_mask_ties_go_to_the_earlier_token():
    delta = torch.tensor([1.0, 2.0, 2.0, 0.5, 2.0, 2.0])
    assert selective_mask(delta, 0.5).tolist() == [False, True, True, False, True, False]
    assert selective_mask(torch.zeros(5), 0.4).tolist() == [True, True, False, False, False]


@pytest.mark.parametrize("k", [0, -0.1, 1.5, float("nan")])
def test_k_outside_unit_interval_is_refused(k):
    with pytest.raises(SpecAdaptError, match=r"\(0, 1\]"):
        selective_mask(torch.zeros(4), k)
    with pytest.raises(SpecAdaptError, match=r"\(0, 1\]"):
        DistillSettings(k=k)


# ---------------------------------------------------------------- divergences and the loss


def _logits(n=6, v=50, seed=0, scale=3.0):
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * scale


def test_divergences_match_their_definitions():
    lp, lq = _logits(seed=1).log_softmax(-1), _logits(seed=2).log_softmax(-1)
    p, q = lp.exp(), lq.exp()
    fkl = (p * (lp - lq)).sum(-1)
    torch.testing.assert_close(token_divergence("fkl", lp, lq), fkl)
    torch.testing.assert_close(token_divergence("rkl", lp, lq), token_divergence("fkl", lq, lp))
    m = 0.5 * (p + q)
    jsd = 0.5 * (p * (p / m).log()).sum(-1) + 0.5 * (q * (q / m).log()).sum(-1)
    torch.testing.assert_close(token_divergence("jsd", lp, lq), jsd)
    torch.testing.assert_close(token_divergence("tvd", lp, lq), 0.5 * (p - q).abs().sum(-1))
    for kind in ("fkl", "rkl", "jsd", "tvd"):
        assert token_divergence(kind, lp, lp).abs().max() < 1e-6
    with pytest.raises(SpecAdaptError, match="unknown divergence"):
        token_divergence("kl2", lp, lq)


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("normalize", ["all", "kept"])
def test_k_equal_one_is_plain_forward_kl_distillation(cached, normalize):
    teacher_logits, ref_logits = _logits(20, seed=3), _logits(20, seed=4)
    if cached:
        ids, logp, rest = topk_summary(teacher_logits, 8)
        teacher = TeacherBatch(None, ids, logp, rest)
    else:
        teacher = TeacherBatch(logp=teacher_logits.log_softmax(-1))
    grads = []
    losses = []
    for reference in (None, ref_logits.log_softmax(-1)):
        student = _logits(20, seed=5).requires_grad_(True)
        loss, _ = distill_loss(student.log_softmax(-1), teacher, reference_logp=reference, k=1.0, normalize=normalize)
        loss.backward()
        losses.append(loss.detach())
        grads.append(student.grad)
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_selective_loss_normalisations():
    teacher = TeacherBatch(logp=_logits(10, seed=6).log_softmax(-1))
    student, ref = _logits(10, seed=7).log_softmax(-1), _logits(10, seed=8).log_softmax(-1)
    per = token_divergence("fkl", teacher.logp, student)
    mask = selective_mask(per - token_divergence("fkl", teacher.logp, ref), 0.4)
    all_norm, stats = distill_loss(student, teacher, reference_logp=ref, k=0.4, normalize="all")
    kept_norm, _ = distill_loss(student, teacher, reference_logp=ref, k=0.4, normalize="kept")
    torch.testing.assert_close(all_norm, per[mask].sum() / 10)
    torch.testing.assert_close(kept_norm, per[mask].mean())
    assert stats["kept_fraction"] == 0.4


# ---------------------------------------------------------------- the cached teacher


def test_cached_kl_is_a_lower_bound_within_the_stated_gap():
    """0 <= KL - KL_c <= r * log max_{x not in S} P~/Q~ (top-64 of 1000, random logits), fp16 storage within 0.01."""
    n, v, k = 200, 1000, 64
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(0.5, 6.0, n)[:, None]  # flat to peaked targets
    t_logits = torch.randn(n, v, generator=g) * scales
    s_logits = t_logits + torch.randn(n, v, generator=g) * 1.5
    lp, lq = t_logits.log_softmax(-1), s_logits.log_softmax(-1)
    ids, top, rest = topk_summary(t_logits, k)
    bound = fkl_gap_bound(t_logits, s_logits, k)
    for kind in ("fkl", "rkl", "jsd", "tvd"):  # coarse-graining never increases an f-divergence
        exact = token_divergence(kind, lp, lq)
        approx = token_divergence(kind, coarse_teacher(top, rest), coarse_student(lq, ids))
        assert (approx <= exact + 1e-5).all(), kind
        if kind == "fkl":
            gap = exact - approx
            assert (gap >= -1e-5).all() and (gap <= bound + 1e-5).all()
            assert float(gap.mean()) < 0.5 * float(exact.mean())  # informative, not just a bound
    stored = token_divergence("fkl", coarse_teacher(top.half(), rest), coarse_student(lq, ids))
    assert (stored - token_divergence("fkl", coarse_teacher(top, rest), coarse_student(lq, ids))).abs().max() < 0.01
    # with k = V the cache is exact
    ids_all, top_all, rest_all = topk_summary(t_logits[:4, :50], 50)
    torch.testing.assert_close(
        token_divergence("fkl", coarse_teacher(top_all, rest_all), coarse_student(lq[:4, :50].log_softmax(-1), ids_all)),
        token_divergence("fkl", t_logits[:4, :50].log_softmax(-1), lq[:4, :50].log_softmax(-1)),
        atol=1e-5, rtol=1e-4,
    )


def _examples(n=6, seed=0, vocab=64):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(2, 6))]
        answer = [rng.randrange(vocab) for _ in range(rng.randint(1, 7))]
        out.append(TrainExample(tuple(prompt + answer), len(prompt)))
    return out


def test_teacher_cache_stores_the_targets_top_k_and_resumes(tmp_path):
    target = tiny_llama(0, init_range=0.3)
    examples = _examples()
    key = cache_key(target, "data-hash", 8)
    cache = build_cache(tmp_path / "c", target, examples, key, batch_tokens=20, progress=False)
    assert len(cache) == len(examples) and cache.top_k == 8
    with torch.no_grad():
        for i, e in enumerate(examples):
            logits = target(torch.tensor([e.input_ids])).logits[0, e.prompt_len - 1 : -1]
            ids, logp, rest = cache.rows(i)
            want_ids, want_logp, want_rest = topk_summary(logits, 8)
            assert ids.shape == (e.num_answer_tokens, 8)
            torch.testing.assert_close(logp, want_logp, atol=1e-2, rtol=1e-3)
            torch.testing.assert_close(rest, want_rest, atol=1e-5, rtol=1e-5)
            assert (ids[:, 0] == want_ids[:, 0]).all()
    # an interrupted build (progress after 2 batches, marker missing) resumes to the same bytes
    before = (tmp_path / "c" / "topk_logp.npy").read_bytes()
    (tmp_path / "c" / ".complete").unlink()
    progress = json.loads((tmp_path / "c" / "progress.json").read_text())
    (tmp_path / "c" / "progress.json").write_text(json.dumps({**progress, "batches_done": 2}))
    assert TeacherCache.open_if_valid(tmp_path / "c", key) is None
    build_cache(tmp_path / "c", target, examples, key, batch_tokens=20, progress=False)
    assert (tmp_path / "c" / "topk_logp.npy").read_bytes() == before
    with pytest.raises(SpecAdaptError, match="different target, data or top-k"):
        TeacherCache.open_if_valid(tmp_path / "c", {**key, "top_k": 16})


# ---------------------------------------------------------------- shallow copies


def test_shallow_copy_reproduces_the_first_layers():
    target = tiny_llama(0, layers=4, init_range=0.3)
    draft = shallow_copy(target, 2)
    assert draft.config.num_hidden_layers == 2 and target.config.num_hidden_layers == 4
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    seen = {}
    target.model.layers[1].register_forward_hook(lambda m, i, o: seen.__setitem__("t", o[0] if isinstance(o, tuple) else o))
    draft.model.layers[1].register_forward_hook(lambda m, i, o: seen.__setitem__("d", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        out_t = target(x, output_hidden_states=True)
        out_d = draft(x)
    torch.testing.assert_close(seen["d"], seen["t"], rtol=0, atol=0)
    # = the target's head applied to its own layer-2 hidden state
    torch.testing.assert_close(out_d.logits, target.lm_head(target.model.norm(out_t.hidden_states[2])), rtol=1e-6, atol=1e-6)
    # chosen layers are renumbered in order; the copy owns its weights
    picked = shallow_copy(target, [0, 3])
    torch.testing.assert_close(picked.model.layers[1].mlp.up_proj.weight, target.model.layers[3].mlp.up_proj.weight)
    picked.model.layers[1].mlp.up_proj.weight.data.zero_()
    assert target.model.layers[3].mlp.up_proj.weight.abs().sum() > 0


def test_shallow_copy_bad_layers_and_train_parts():
    target = tiny_llama(0, layers=2)
    for spec in ("shallow:3", "shallow:0,0", "shallow:0,5"):
        with pytest.raises(SpecAdaptError, match="invalid for a target with 2 layers"):
            shallow_copy(target, parse_draft_init(spec))
    for spec in ("shallow:x", "shallow:"):
        with pytest.raises(SpecAdaptError, match="bad draft init"):
            parse_draft_init(spec)
    assert parse_draft_init("some/model") is None
    draft = shallow_copy(target, 1)
    total = sum(p.numel() for p in draft.parameters())
    head, embed = draft.lm_head.weight.numel(), draft.model.embed_tokens.weight.numel()
    assert set_trainable(draft, "all")["trainable_parameters"] == total
    assert set_trainable(draft, "layers")["trainable_parameters"] == total - head - embed
    assert not draft.lm_head.weight.requires_grad and draft.model.norm.weight.requires_grad
    assert set_trainable(draft, "head")["trainable_parameters"] == head + draft.model.norm.weight.numel()
    assert set_trainable(draft, "layers+head")["trainable_parameters"] == total - embed
    with pytest.raises(SpecAdaptError, match="unknown --train"):
        set_trainable(draft, "everything")


# ---------------------------------------------------------------- the trainer


def test_target_and_reference_get_no_gradients_and_stay_in_eval_mode(tmp_path):
    target = tiny_llama(0, init_range=0.3)
    reference = shallow_copy(target, 1)
    student = shallow_copy(target, 1).train()
    calls = []

    def spy(name):
        return lambda module, args, output: calls.append((name, module.training, torch.is_grad_enabled()))

    target.register_forward_hook(spy("target"))
    reference.register_forward_hook(spy("reference"))
    settings = fast_settings(method="adaspec", teacher="exact", on_policy=0.5, on_policy_max_new_tokens=3)
    trainer = DistillTrainer(
        model=student, args=training_arguments(tmp_path, settings, True),
        train_dataset=DistillDataset(_examples(8)), data_collator=DistillCollator(0),
        settings=settings, selective=True, target=target, reference=reference,
    )
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer.train()
    assert {name for name, _, _ in calls} == {"target", "reference"}
    assert all(not training and not grad for _, training, grad in calls)
    for model in (target, reference):
        assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.state_dict().items())  # the draft did train


# ---------------------------------------------------------------- end to end


@pytest.fixture()
def tiny_setup(tmp_path):
    save_tiny_checkpoint(tmp_path / "target", 0, WORDS)
    rng = random.Random(0)
    with open(tmp_path / "data.jsonl", "w") as f:
        for _ in range(16):
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
            f.write(json.dumps({"prompt": prompt, "response": " ".join(rng.choices(WORDS, k=rng.randint(3, 8)))}) + "\n")
    return tmp_path


def test_end_to_end_adaspec_then_distillspec(tiny_setup):
    from specadapt.api import SpecDecoder

    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    summary = run_distill(target, "shallow:1", data, root / "ada", fast_settings(), log=lambda m: None)
    assert stage_finished(root / "ada" / "reference") and stage_finished(root / "ada" / "draft")
    assert not (root / "ada" / "draft" / "checkpoints").exists()
    record = json.loads((root / "ada" / "distill.json").read_text())
    assert set(record["stages"]) == {"reference", "draft"}
    assert 0.4 <= summary["stages"]["draft"]["last_log"]["kept_fraction"] < 0.7
    # the draft is a normal checkpoint the decoder accepts
    dec = SpecDecoder.from_pretrained(target, str(root / "ada" / "draft"), dtype="float32", device="cpu")
    out = dec.generate("the cat sat", method="fixed:3", max_new_tokens=6)
    assert len(out.token_ids) == 6
    # a finished draft is not overwritten by accident
    with pytest.raises(SpecAdaptError, match="--overwrite"):
        run_distill(target, "shallow:1", data, root / "ada", fast_settings(), log=lambda m: None)
    # an unfinished draft with a finished reference: the reference is reused, if it fits
    shutil.rmtree(root / "ada" / "draft")
    logs = []
    run_distill(target, "shallow:1", data, root / "ada", fast_settings(), log=logs.append)
    assert any(m.startswith("reusing the reference model") for m in logs) and stage_finished(root / "ada" / "draft")
    shutil.rmtree(root / "ada" / "draft")
    with pytest.raises(SpecAdaptError, match="another draft init"):
        run_distill(target, "shallow:2", data, root / "ada", fast_settings(), log=lambda m: None)
    # DistillSpec: another divergence, on-policy batches, the cache shared from the first run
    settings = fast_settings(method="distillspec", divergence="rkl", on_policy=0.5, on_policy_max_new_tokens=4,
                             teacher_cache=str(root / "ada" / "teacher_cache"))
    summary = run_distill(target, "shallow:1", data, root / "ds", settings, log=lambda m: None)
    assert set(summary["stages"]) == {"draft"} and not (root / "ds" / "teacher_cache").exists()
    run_distill(target, "shallow:1", data, root / "ds", settings, overwrite=True, log=lambda m: None)
    assert json.loads((root / "ds" / "draft" / "config.json").read_text())["num_hidden_layers"] == 1
    # AdaSPEC reusing an existing reference, exact teacher
    settings = fast_settings(teacher="exact", reference=str(root / "ds" / "draft"), normalize="kept")
    summary = run_distill(target, "shallow:1", data, root / "ada2", settings, log=lambda m: None)
    assert set(summary["stages"]) == {"draft"}
    # and eval-draft on what was trained
    from specadapt.distill.eval_draft import EvalSettings, run_eval_draft

    report = run_eval_draft(target, [str(root / "ada2" / "draft"), str(root / "ds" / "draft")], data, root / "eval",
                            EvalSettings(max_new_tokens=4, ks=(2,)), num_prompts=3, dtype="float32", device="cpu",
                            log=lambda m: None)
    assert len(report["drafts"]) == 2 and (root / "eval" / "eval.md").exists()


def test_a_run_stopped_between_stages_has_the_record_of_the_finished_one(tiny_setup, monkeypatch):
    import specadapt.distill.train as train

    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    original = train.train_stage

    def stop_at_the_draft(stage_dir, *args, selective=False, **kwargs):
        if selective:
            raise KeyboardInterrupt  # killed as stage 2 starts
        return original(stage_dir, *args, selective=selective, **kwargs)

    monkeypatch.setattr(train, "train_stage", stop_at_the_draft)
    with pytest.raises(KeyboardInterrupt):
        run_distill(target, "shallow:1", data, root / "ada", fast_settings(), log=lambda m: None)
    record = json.loads((root / "ada" / "distill.json").read_text())
    assert list(record["stages"]) == ["reference"] and record["stages"]["reference"]["steps"] == 2
    assert record["compute"]["total"]["optimizer_steps"] == 2
    # resumed: the reference is reused, its record kept, and the draft's added
    monkeypatch.undo()
    (root / "ada" / "distill.json").unlink()  # the reused reference's record comes from its own folder
    run_distill(target, "shallow:1", data, root / "ada", fast_settings(), log=lambda m: None)
    record = json.loads((root / "ada" / "distill.json").read_text())
    assert list(record["stages"]) == ["reference", "draft"] and record["compute"]["total"]["optimizer_steps"] == 4


def test_a_time_limit_stops_resumably_and_the_sittings_train_what_one_run_trains(tiny_setup):
    from safetensors.torch import load_file

    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    settings = {"cache_batch_tokens": 48, "save_steps": 1}
    run_distill(target, "shallow:1", data, root / "whole", fast_settings(**settings), log=lambda m: None)
    stops = []
    for _ in range(30):  # every sitting ends after its first cache batch or optimizer step
        summary = run_distill(target, "shallow:1", data, root / "split", fast_settings(**settings, time_limit=1e-9),
                              log=lambda m: None)
        if "stopped" not in summary:
            break
        stops.append((summary["stopped"]["stage"], summary["stopped"].get("steps")))
    cache_stops = stops.count(("teacher cache", None))
    assert cache_stops >= 2 and stops == [("teacher cache", None)] * cache_stops + [("reference", 1), ("draft", 1)]
    record = json.loads((root / "split" / "distill.json").read_text())
    assert list(record["stages"]) == ["reference", "draft"] and record["compute"]["total"]["optimizer_steps"] == 4
    for stage in ("reference", "draft"):
        a, b = (load_file(root / run / stage / "model.safetensors") for run in ("whole", "split"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=f"{stage}: {key}")


def test_several_data_sources_alternate(tmp_path):
    from specadapt.distill.data import load_train_pairs

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"prompt": f"a{i}", "response": f"ra{i}"}) + "\n" for i in range(4)))
    b.write_text("".join(json.dumps({"prompt": f"b{i}", "response": f"rb{i}"}) + "\n" for i in range(2)))
    mixed = load_train_pairs(f"{a},{b}")
    assert [p.prompt for p in mixed] == ["a0", "b0", "a1", "b1", "a2", "a3"]
    assert [p.prompt for p in load_train_pairs(f"{a},{b}", 3)] == ["a0", "b0", "a1"]
    gsm = load_train_pairs(f"gsm8k,{b}", 4)
    assert [p.prompt for p in gsm[1::2]] == ["b0", "b1"] and "Natalia" in gsm[0].prompt  # the first GSM8K train problem
    for spec in (f"{a},{a}", f"{a},,{b}"):
        with pytest.raises(SpecAdaptError, match="list each source once"):
            load_train_pairs(spec)
    with pytest.raises(SpecAdaptError, match="'gsm8k-typo' not found"):
        load_train_pairs(f"{a},gsm8k-typo")


def test_distill_cli_and_bad_input(tiny_setup):
    from typer.testing import CliRunner

    from specadapt.cli import app

    root = tiny_setup
    target, data = str(root / "target"), str(root / "data.jsonl")
    result = CliRunner().invoke(app, [
        "distill", "--target", target, "--draft-init", "shallow:1", "--data", data, "--out", str(root / "cli"),
        "--method", "distillspec", "--max-steps", "1", "--batch-size", "2", "--micro-batch-size", "2",
        "--precision", "fp32", "--device", "cpu", "--no-progress", "--cache-top-k", "4",
    ])
    assert result.exit_code == 0, result.output
    assert stage_finished(root / "cli" / "draft")
    stopped = CliRunner().invoke(app, [
        "distill", "--target", target, "--draft-init", "shallow:1", "--data", data, "--out", str(root / "cli-stop"),
        "--method", "distillspec", "--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2",
        "--precision", "fp32", "--device", "cpu", "--no-progress", "--cache-top-k", "4", "--time-limit", "1e-9",
    ])
    assert stopped.exit_code == 0, stopped.output
    assert "stopped by --time-limit in the draft after step 1 of 2; rerun the same command to resume." in stopped.output
    assert not stage_finished(root / "cli-stop" / "draft")

    save_tiny_checkpoint(root / "other", 1, ["completely", "different", "words"])
    bad = [
        ({"draft_init": str(root / "other")}, "different tokenizers"),
        ({"data": str(root / "missing.jsonl")}, "not found"),
        ({"data": "gsm8k-typo"}, "not found"),
        ({"draft_init": "shallow:9"}, "invalid for a target with 2 layers"),
    ]
    for change, message in bad:
        args = {"target": target, "draft_init": "shallow:1", "data": data, "out": root / "bad", **change}
        with pytest.raises(SpecAdaptError, match=message):
            run_distill(args["target"], args["draft_init"], args["data"], args["out"], fast_settings(), log=lambda m: None)
    (root / "noresp.jsonl").write_text(json.dumps({"prompt": "the cat"}) + "\n")
    with pytest.raises(SpecAdaptError, match="response"):
        run_distill(target, "shallow:1", str(root / "noresp.jsonl"), root / "bad", fast_settings(), log=lambda m: None)
    with pytest.raises(SpecAdaptError, match="multiple of --micro-batch-size"):
        fast_settings(batch_size=5)
    with pytest.raises(SpecAdaptError, match="--reference is for --method adaspec"):
        fast_settings(method="distillspec", reference="x")


def test_an_interrupted_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    from specadapt.distill.train import train_stage

    target = tiny_llama(0, init_range=0.3)
    settings = fast_settings(method="distillspec", teacher="exact", max_steps=3, save_steps=2)
    crash_at_checkpoint(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train_stage(tmp_path / "draft", shallow_copy(target, 1).train(), _examples(12), settings, selective=False, target=target)
    monkeypatch.undo()
    assert (tmp_path / "draft" / "checkpoints" / "checkpoint-2").is_dir() and not stage_finished(tmp_path / "draft")
    with pytest.raises(SpecAdaptError, match="different settings"):
        train_stage(tmp_path / "draft", shallow_copy(target, 1).train(), _examples(12), fast_settings(**{**settings.__dict__, "learning_rate": 1e-3}),
                    selective=False, target=target)
    logs = []
    metrics = train_stage(tmp_path / "draft", shallow_copy(target, 1).train(), _examples(12), settings, selective=False,
                          target=target, log=logs.append)
    assert logs and logs[0].startswith("resuming draft from") and logs[0].endswith("checkpoint-2")
    assert metrics["steps"] == 3 and stage_finished(tmp_path / "draft")
