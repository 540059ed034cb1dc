"""Bad input gets a clear SpecAdaptError (and, on the command line, one line and exit code 2)."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from specadapt import RequestConfig, SpecAdaptError, SpecDecoder, make_method
from specadapt.models import loading

from conftest import make_engine, save_tiny_checkpoint

WORDS = [f"w{i}" for i in range(62)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    save_tiny_checkpoint(root / "target", 0, WORDS)
    save_tiny_checkpoint(root / "draft", 1, WORDS)
    save_tiny_checkpoint(root / "other", 2, [f"x{i}" for i in range(62)])
    return root


def test_unknown_method_lists_known_ones():
    with pytest.raises(SpecAdaptError, match=r"unknown method 'nope'. Known methods: .*autoregressive.*fixed.*heuristic"):
        make_method("nope")


def test_bad_method_settings():
    with pytest.raises(SpecAdaptError, match=r"has no setting 'x'. Its settings: k"):
        make_method("fixed:x=3")
    with pytest.raises(SpecAdaptError, match=r"k must be >= 1"):
        make_method("fixed:0")
    with pytest.raises(SpecAdaptError, match=r"not a valid int"):
        make_method("fixed:four")


def test_method_settings_out_of_range_or_repeated():
    with pytest.raises(SpecAdaptError, match=r"k must be an integer in \[1, 64\] \(the most draft tokens a round may hold\), got 1000"):
        make_method("fixed:1000")
    with pytest.raises(SpecAdaptError, match=r"max_k must be an integer in \[1, 64\]"):
        make_method("adaedl:max_k=65")
    with pytest.raises(SpecAdaptError, match=r"method 'fixed:4,k=5': setting 'k' is given twice; give it once."):
        make_method("fixed:4,k=5")


def test_method_strings_parse():
    m = make_method("confidence:threshold=0.25,max_k=7")
    assert (m.policy.threshold, m.policy.max_k) == (0.25, 7)
    assert make_method("fixed:6").policy.k == 6
    assert make_method("heuristic", initial_k=3).policy.initial_k == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
    ({"temperature": -1.0}, "temperature must be >= 0"),
    ({"top_p": 1.2}, "top_p must be in"),
    ({"top_p": 0.0}, "top_p must be in"),
    ({"temperature": 1e-38}, r"temperature 1e-38 is too small: logits divided by it overflow. Use 0 for greedy"),
    ({"seed": 2**64}, r"seed must be an integer in \[0, "),
    ({"seed": "7"}, r"seed must be an integer in \[0, .*got '7'"),
    ({"seed": 1.5}, r"seed must be an integer in \[0, .*got 1.5"),
    ({"seed": -1}, r"seed must be an integer in \[0, "),
    ({"stop_strings": ["ok", ""]}, "stop strings must be non-empty text"),
])
def test_bad_generation_settings(kwargs, message):
    with pytest.raises(SpecAdaptError, match=message):
        RequestConfig(**kwargs)


def test_empty_prompt(target, close_draft, checkpoints):
    with pytest.raises(SpecAdaptError, match="at least one token"):
        make_engine(target, close_draft).generate([[1, 2], []], make_method("fixed:2"), RequestConfig())
    dec = SpecDecoder.from_pretrained(str(checkpoints / "target"), None, dtype="float32", device="cpu")
    with pytest.raises(SpecAdaptError, match="prompt is empty"):
        dec.generate("   ")


def test_method_needing_a_draft_without_one(target):
    with pytest.raises(SpecAdaptError, match="needs a draft model"):
        make_engine(target, None).generate([[1, 2]], make_method("fixed:2"), RequestConfig())


def test_missing_paths_and_bad_folders(tmp_path):
    with pytest.raises(SpecAdaptError, match="does not exist"):
        loading.resolve("./no/such/model")
    with pytest.raises(SpecAdaptError, match="holds no config.json"):
        loading.resolve(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SpecAdaptError, match="not a .gguf model"):
        loading.resolve(str(tmp_path / "notes.txt"))


def test_corrupt_checkpoint(tmp_path):
    save_tiny_checkpoint(tmp_path / "m", 0, WORDS)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SpecAdaptError, match="corrupt"):
        loading.load_model(str(tmp_path / "m"), "float32", "cpu")


def test_tokenizer_mismatch_is_refused(checkpoints):
    with pytest.raises(SpecAdaptError, match="different tokenizers"):
        SpecDecoder.from_pretrained(str(checkpoints / "target"), str(checkpoints / "other"), dtype="float32", device="cpu")


def test_bad_dtype_device_and_draft_vocab(checkpoints):
    with pytest.raises(SpecAdaptError, match="unknown dtype"):
        SpecDecoder.from_pretrained(str(checkpoints / "target"), None, dtype="int3")
    with pytest.raises(SpecAdaptError, match="unknown device"):
        SpecDecoder.from_pretrained(str(checkpoints / "target"), None, device="tpu9")
    with pytest.raises(SpecAdaptError, match=r"draft_vocab must be 'full' \(the whole vocabulary\) or a number of token ids >= 1, got 0"):
        SpecDecoder.from_pretrained(str(checkpoints / "target"), str(checkpoints / "draft"), draft_vocab=0, device="cpu")


def test_api_batch_of_text_prompts_equals_single(checkpoints):
    dec = SpecDecoder.from_pretrained(str(checkpoints / "target"), str(checkpoints / "draft"), dtype="float32", device="cpu")
    prompts = ["w1 w2 w3", "w7", "w10 w11 w12 w13 w14 w15"]
    batch = dec.generate(prompts, method="heuristic", max_new_tokens=12)
    assert [r.token_ids for r in batch] == [dec.generate(p, method="heuristic", max_new_tokens=12).token_ids for p in prompts]
    reference = dec.generate(prompts, method="autoregressive", max_new_tokens=12)
    assert [r.token_ids for r in batch] == [r.token_ids for r in reference]
    assert dec.generate(dec.encode(prompts[0]), max_new_tokens=12).token_ids == batch[0].token_ids  # token-id prompt


def test_api_prompt_forms_and_their_errors(checkpoints):
    dec = SpecDecoder.from_pretrained(str(checkpoints / "target"), None, dtype="float32", device="cpu")
    with pytest.raises(SpecAdaptError, match=r"a single chat message must be given inside a list"):
        dec.generate({"role": "user", "content": "w1 w2"}, method="autoregressive")
    with pytest.raises(SpecAdaptError, match=r"token id 64 is outside the model's vocabulary \[0, 64\)"):
        dec.generate([1, 2, 64], method="autoregressive")
    with pytest.raises(SpecAdaptError, match=r"token id -1 is outside"):
        dec.generate([[1, 2], [-1]], method="autoregressive")
    with pytest.raises(SpecAdaptError, match=r"a prompt must be text, a list of token ids or a list of chat messages"):
        dec.generate([[1, "w2"]], method="autoregressive")
    with pytest.raises(SpecAdaptError, match=r"the prompt has 3 tokens and max_new_tokens is 510: together more than "
                                             r"the model's context window of 512 tokens"):
        dec.generate([1, 2, 3], method="autoregressive", max_new_tokens=510)
    assert len(dec.generate([1, 2, 3], method="autoregressive", max_new_tokens=509).token_ids) == 509


def test_api_is_safe_from_several_threads_sharing_a_method(checkpoints):
    dec = SpecDecoder.from_pretrained(str(checkpoints / "target"), str(checkpoints / "draft"), dtype="float32", device="cpu")
    method = make_method("adaedl")  # keeps per-request state: unsafe if two batches ran it at once
    prompts = [[1 + i, 2 + i, 3] for i in range(8)]

    def run(prompt):  # greedy output is the target's either way: the draft lengths show mixed-up policy state
        r = dec.generate(prompt, method=method, max_new_tokens=10)
        return r.token_ids, r.stats.rounds, r.stats.drafted

    alone = [run(p) for p in prompts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(run, prompts))
    assert together == alone


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "specadapt", *args], capture_output=True, text=True, timeout=600)  # a hang, not a slow machine


def test_cli_errors_are_one_clear_line(checkpoints):
    out = run_cli("generate", "", "--target", str(checkpoints / "target"), "--method", "autoregressive")
    assert out.returncode == 2 and "prompt is empty" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("generate", "w1", "--target", "./missing/model")
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    out = run_cli("generate", "w1", "--target", str(checkpoints / "target"), "--draft", str(checkpoints / "other"))
    assert out.returncode == 2 and "different tokenizers" in out.stderr
    out = run_cli("generate", "w1", "--method", "bogus")
    assert out.returncode == 2 and "Known methods" in out.stderr
    out = run_cli("generate", "w1", "--top-p", "2")
    assert out.returncode == 2 and "top_p must be in (0, 1]" in out.stderr


def test_cli_json_on_tiny_checkpoints(checkpoints):
    import json

    out = run_cli("generate", "w1 w2", "--target", str(checkpoints / "target"), "--draft", str(checkpoints / "draft"),
                  "--method", "fixed:3", "--max-new-tokens", "9", "--json", "--dtype", "float32", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["lossless"] is True and len(record["token_ids"]) <= 9
    assert record["stats"]["generated_tokens"] == len(record["token_ids"])
    assert "logprobs" not in record  # only on request

    out = run_cli("generate", "w1 w2", "--target", str(checkpoints / "target"), "--draft", str(checkpoints / "draft"),
                  "--method", "fixed:3", "--max-new-tokens", "9", "--json", "--logprobs", "2", "--dtype", "float32")
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert [e["token_id"] for e in record["logprobs"]] == record["token_ids"]
    assert all(len(e["top"]) == 2 and e["top"][0][0] == e["token_id"] and e["top"][0][1] == e["logprob"]
               for e in record["logprobs"])  # greedy: each token is its position's most likely
    out = run_cli("generate", "w1", "--logprobs", "2")
    assert out.returncode == 2 and "--logprobs are reported in the --json output; add --json." in out.stderr
