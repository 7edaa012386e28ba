"""Issue 19's parameters and endpoints end to end, through the official openai SDK: the real
controller, a CPU worker and the gateway. Each parameter's effect (logit_bias, min_tokens,
include_stop_str_in_output, skip_special_tokens, echo with logprobs, prompt_logprobs,
truncate_prompt_tokens), each refusal (400 naming the field), unknown fields (ignored, warned
once), /v1/embeddings, /tokenize and /detokenize, and CORS.

Most run on stories260K (fast, deterministic); the `smol` ones on a real chat model,
SmolLM2-135M-Instruct, which tests/fetch_test_models.py fetches (they skip, saying why, when it
cannot be had)."""
import base64
import math
import struct
import sys
import time
from pathlib import Path

import openai
import pytest
import requests

from conftest import Proc, binary, free_port, need_stories, reference

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fetch_test_models  # noqa: E402

STORIES = "stories260K"
PROMPT = "Once upon a time"
EOS = 2  # stories260K's


class Trio:
    """Controller, one worker and a gateway for the whole module, killed at its end."""

    def __init__(self, model_path, name, worker_args=(), gateway_args=()):
        self.procs = []
        try:
            port = free_port()
            ctl = self._start([binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(port)],
                              port, "controller").wait_http("/health")
            port = free_port()
            self.worker = self._start(
                [binary("sluice-worker"), "--model-path", str(model_path), "--model-names", name, "--device", "cpu",
                 "--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--controller-address", ctl.url,
                 *worker_args], port, "worker").wait_http("/health", timeout=60)
            deadline = time.time() + 20
            while not requests.get(ctl.url + "/workers", timeout=5).json()["workers"]:
                assert time.time() < deadline, "the worker did not register"
                time.sleep(0.05)
            port = free_port()
            self.gateway = self._start(
                [binary("sluice-gateway"), "--host", "127.0.0.1", "--port", str(port), "--controller-address",
                 ctl.url, "--controller-timeout-ms", "2000", *gateway_args], port, "gateway").wait_http("/health")
        except BaseException:
            self.close()
            raise
        self.url = self.gateway.url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=120)

    def _start(self, args, port, name):
        p = Proc(args, port, name)
        self.procs.append(p)
        return p

    def close(self):
        for p in self.procs:
            p.kill()


@pytest.fixture(scope="module")
def stories():
    trio = Trio(need_stories() / "hf", STORIES, gateway_args=("--allowed-origins", "https://app.example, http://b:81"))
    yield trio
    trio.close()


@pytest.fixture(scope="module")
def smol():
    try:
        path = fetch_test_models.fetch()
    except RuntimeError as e:
        pytest.skip(f"SmolLM2-135M-Instruct could not be fetched ({e}); `make fetch-test-models` gets it")
    trio = Trio(path, "smol", worker_args=("--pooling", "mean"))
    yield trio
    trio.close()


def bad_request(call, param):
    """Runs call, which must be refused with a 400 naming param; returns the message."""
    with pytest.raises(openai.BadRequestError) as e:
        call()
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body
    return e.value.message


def detokenize(trio, ids):
    r = requests.post(trio.url + "/detokenize", json={"model": STORIES, "tokens": ids}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["prompt"]


# --- sampling parameters -----------------------------------------------------------------------


def test_logit_bias_forces_and_bans(stories):
    c = stories.client
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=6, temperature=1.0, seed=3,
                             logit_bias={"300": 100})
    assert r.choices[0].text == detokenize(stories, [300] * 6)
    greedy = reference()["prompts"][PROMPT]["greedy_ids"]
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=1, temperature=0,
                             logit_bias={str(greedy[0]): -100})
    assert r.choices[0].text and r.choices[0].text != detokenize(stories, greedy[:1])


def test_min_tokens_delays_eos(stories):
    c = stories.client
    # EOS biased to certainty ends at once; min_tokens holds it back for 5 tokens.
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=20, temperature=0,
                             logit_bias={str(EOS): 100})
    assert r.usage.completion_tokens == 1 and r.choices[0].finish_reason == "stop" and r.choices[0].text == ""
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=20, temperature=0,
                             logit_bias={str(EOS): 100}, extra_body={"min_tokens": 5})
    assert r.usage.completion_tokens == 6 and r.choices[0].finish_reason == "stop"
    assert r.choices[0].text
    msg = bad_request(lambda: c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=3,
                                                   extra_body={"min_tokens": 4}), "min_tokens")
    assert "max_tokens" in msg


def test_include_stop_str_in_output(stories):
    c = stories.client
    ref = reference()["prompts"][PROMPT]["greedy_text"]
    cut = ref[:ref.index("Lily")]
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=64, temperature=0, stop=["Lily"])
    assert r.choices[0].text == cut
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=64, temperature=0, stop=["Lily"],
                             extra_body={"include_stop_str_in_output": True})
    assert r.choices[0].text == cut + "Lily" and r.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model=STORIES, prompt=PROMPT, max_tokens=64, temperature=0, stop=["Lily"], stream=True,
        extra_body={"include_stop_str_in_output": True}) if ch.choices)
    assert streamed == cut + "Lily"


def test_skip_special_tokens_false_shows_them(stories):
    c = stories.client
    args = dict(model=STORIES, prompt=PROMPT, max_tokens=8, temperature=0, logit_bias={str(EOS): 100})
    shown = c.completions.create(**args, extra_body={"min_tokens": 2, "include_stop_str_in_output": True,
                                                     "skip_special_tokens": False})
    hidden = c.completions.create(**args, extra_body={"min_tokens": 2, "include_stop_str_in_output": True})
    eos_text = detokenize(stories, [EOS]) or "</s>"
    assert shown.choices[0].text.endswith("</s>"), (shown.choices[0].text, eos_text)
    assert "</s>" not in hidden.choices[0].text
    # Fast tokenizers (ours, as Hugging Face's) put no spaces between special tokens either way.
    both = [c.completions.create(**args, extra_body={"min_tokens": 2, "include_stop_str_in_output": True,
                                                     "skip_special_tokens": False,
                                                     "spaces_between_special_tokens": flag}).choices[0].text
            for flag in (True, False)]
    assert both[0] == both[1] == shown.choices[0].text
    bad_request(lambda: c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2,
                                             extra_body={"spaces_between_special_tokens": "no"}),
                "spaces_between_special_tokens")


def test_echo_with_logprobs_gives_the_prompts_first_null(stories):
    c = stories.client
    ref = reference()["prompts"][PROMPT]
    n_prompt = len(ref["prompt_ids"])
    for stream in (False, True):
        if stream:
            chunks = [ch.choices[0] for ch in c.completions.create(
                model=STORIES, prompt=PROMPT, max_tokens=3, temperature=0, echo=True, logprobs=1, stream=True)
                if ch.choices]
            tokens = [t for ch in chunks if ch.logprobs for t in ch.logprobs.tokens]
            lps = [lp for ch in chunks if ch.logprobs for lp in ch.logprobs.token_logprobs]
            text = "".join(ch.text for ch in chunks)
        else:
            ch = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=3, temperature=0, echo=True,
                                      logprobs=1).choices[0]
            tokens, lps, text = ch.logprobs.tokens, ch.logprobs.token_logprobs, ch.text
        assert text.startswith(PROMPT)
        assert len(tokens) == n_prompt + 3 and len(lps) == n_prompt + 3
        assert lps[0] is None and all(lp is not None and lp <= 0 for lp in lps[1:]), lps
        assert "".join(tokens[1:n_prompt]).strip() == PROMPT.strip()


def test_prompt_logprobs_vllm_shape(stories):
    c = stories.client
    ids = reference()["prompts"][PROMPT]["prompt_ids"]
    r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2, temperature=0,
                             extra_body={"prompt_logprobs": 2})
    plp = r.to_dict()["choices"][0]["prompt_logprobs"]
    assert len(plp) == len(ids) and plp[0] is None
    for i, entry in enumerate(plp[1:], 1):
        own = entry[str(ids[i])]
        assert own["logprob"] <= 0 and own["rank"] >= 1
        # The two best (ranks 1 and 2), and the prompt's own token when it is neither.
        assert sorted(v["rank"] for v in entry.values())[:2] == [1, 2], entry
        assert len(entry) == (2 if own["rank"] <= 2 else 3), entry
    chat = c.chat.completions.create(model=STORIES, messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                     extra_body={"prompt_logprobs": 0})
    plp = chat.to_dict()["prompt_logprobs"]
    assert plp[0] is None and all(len(e) == 1 for e in plp[1:])
    bad_request(lambda: c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2,
                                             extra_body={"prompt_logprobs": 21}), "prompt_logprobs")


def test_truncate_prompt_tokens_keeps_the_end(stories):
    c = stories.client
    long_prompt = "Lily went to the park. " * 20
    r = c.completions.create(model=STORIES, prompt=long_prompt, max_tokens=2, temperature=0,
                             extra_body={"truncate_prompt_tokens": 10})
    assert r.usage.prompt_tokens == 10
    bad_request(lambda: c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2,
                                             extra_body={"truncate_prompt_tokens": 100000}),
                "truncate_prompt_tokens")


def test_known_but_not_honoured_is_a_400_naming_it(stories):
    c = stories.client
    msgs = [{"role": "user", "content": "hi"}]
    for extra, param in [({"use_beam_search": True}, "use_beam_search"), ({"best_of": 2}, "best_of"),
                         ({"length_penalty": 0.5}, "length_penalty"), ({"echo": True}, "echo"),
                         ({"chat_template": "{{ 1 }}"}, "chat_template"), ({"priority": 2}, "priority")]:
        bad_request(lambda: c.chat.completions.create(model=STORIES, messages=msgs, max_tokens=2, extra_body=extra),
                    param)
    bad_request(lambda: c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2, suffix="end"), "suffix")
    bad_request(lambda: c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2, n=1, best_of=2), "best_of")
    # What asks nothing is fine.
    r = c.chat.completions.create(model=STORIES, messages=msgs, max_tokens=2, n=2,
                                  extra_body={"use_beam_search": False, "best_of": 2, "priority": 0})
    assert len(r.choices) == 2


def test_unknown_fields_are_ignored_and_warned_once(stories):
    c = stories.client
    for _ in range(3):
        r = c.completions.create(model=STORIES, prompt=PROMPT, max_tokens=2, extra_body={"frobnicate_me": 1})
        assert r.usage.completion_tokens == 2
    stories.gateway.log.flush()
    log = stories.gateway.log_path.read_text(errors="replace")
    assert log.count("unknown field 'frobnicate_me'") == 1


# --- /tokenize, /detokenize ----------------------------------------------------------------------


def test_tokenize_and_detokenize(stories):
    ids = reference()["prompts"][PROMPT]["prompt_ids"]
    r = requests.post(stories.url + "/tokenize", json={"model": STORIES, "prompt": PROMPT}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json() == {"count": len(ids), "max_model_len": 512, "tokens": ids}
    r = requests.post(stories.url + "/tokenize", json={"model": STORIES, "prompt": PROMPT,
                                                      "add_special_tokens": False}, timeout=30)
    assert r.json()["tokens"] == ids[1:]
    r = requests.post(stories.url + "/tokenize", json={"model": STORIES, "messages": [
        {"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 200 and r.json()["count"] == len(r.json()["tokens"]) > 1
    assert detokenize(stories, ids[1:]) == PROMPT
    for path, body, status, param in [
            ("/tokenize", {"model": STORIES}, 400, "prompt"),
            ("/tokenize", {"model": STORIES, "prompt": "a", "messages": []}, 400, "messages"),
            ("/detokenize", {"model": STORIES, "tokens": [1, -1]}, 400, "tokens"),
            ("/detokenize", {"model": STORIES, "tokens": [5000]}, 400, "tokens"),
            ("/tokenize", {"model": "nope", "prompt": "a"}, 404, "model")]:
        r = requests.post(stories.url + path, json=body, timeout=30)
        assert r.status_code == status and r.json()["error"]["param"] == param, (path, body, r.text)
    assert requests.get(stories.url + "/tokenize", timeout=30).status_code == 405


# --- /v1/embeddings ------------------------------------------------------------------------------


def test_embeddings_float_base64_and_token_ids(stories):
    c = stories.client
    r = c.embeddings.create(model=STORIES, input=["Once upon a time", "The dog ran"], encoding_format="float")
    assert r.object == "list" and r.model == STORIES and [d.index for d in r.data] == [0, 1]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 64 for v in vecs)  # stories260K's hidden size
    assert all(abs(math.fsum(x * x for x in v) - 1) < 1e-5 for v in vecs)
    assert vecs[0] != vecs[1]
    ids = reference()["prompts"][PROMPT]["prompt_ids"]
    assert r.usage.prompt_tokens == len(ids) + len(requests.post(
        stories.url + "/tokenize", json={"model": STORIES, "prompt": "The dog ran"}, timeout=30).json()["tokens"])
    raw = requests.post(stories.url + "/v1/embeddings", json={"model": STORIES, "input": PROMPT,
                                                              "encoding_format": "base64"}, timeout=30).json()
    decoded = list(struct.unpack("<64f", base64.b64decode(raw["data"][0]["embedding"])))
    assert max(abs(a - b) for a, b in zip(decoded, vecs[0])) < 1e-6
    by_ids = c.embeddings.create(model=STORIES, input=ids, encoding_format="float").data[0].embedding
    assert max(abs(a - b) for a, b in zip(by_ids, vecs[0])) < 1e-6
    both = c.embeddings.create(model=STORIES, input=[ids, ids[:3]], encoding_format="float").data
    assert len(both) == 2 and both[0].embedding == by_ids
    # The SDK's default asks base64 and decodes it.
    assert max(abs(a - b) for a, b in zip(c.embeddings.create(model=STORIES, input=PROMPT).data[0].embedding,
                                            vecs[0])) < 1e-6


def test_embeddings_refusals(stories):
    c = stories.client
    bad_request(lambda: c.embeddings.create(model=STORIES, input="x", dimensions=8), "dimensions")
    assert len(c.embeddings.create(model=STORIES, input="x", dimensions=64,
                                   encoding_format="float").data[0].embedding) == 64
    bad_request(lambda: c.embeddings.create(model=STORIES, input=""), "input")
    bad_request(lambda: c.embeddings.create(model=STORIES, input=[[5000]]), "input")
    bad_request(lambda: c.embeddings.create(model=STORIES, input="x", extra_body={"normalize": False}), "normalize")
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="nope", input="x")


def test_fastchat_worker_get_embeddings(stories):
    """FastChat's worker endpoint, with FastChat's shapes (fastchat/serve/model_worker.py)."""
    url = stories.worker.url + "/worker_get_embeddings"
    r = requests.post(url, json={"model": STORIES, "input": ["Once upon a time", "The dog ran"]}, timeout=30).json()
    assert len(r["embedding"]) == 2 and len(r["embedding"][0]) == 64 and r["token_num"] > 5
    r = requests.post(url, json={"input": ["hi"], "encoding_format": "base64"}, timeout=30).json()
    assert len(base64.b64decode(r["embedding"][0])) == 64 * 4
    r = requests.post(url, json={"input": []}, timeout=30)
    assert r.status_code == 200 and r.json()["error_code"] == 40001


# --- CORS ------------------------------------------------------------------------------------------


def test_cors_preflight_and_answers(stories, procs):
    pre = requests.options(stories.url + "/v1/chat/completions", timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 204
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert pre.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert pre.headers["Vary"] == "Origin"
    r = requests.post(stories.url + "/v1/completions", headers={"Origin": "http://b:81"}, timeout=30,
                      json={"model": STORIES, "prompt": PROMPT, "max_tokens": 1})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "http://b:81"
    assert "X-Request-Id" in r.headers["Access-Control-Expose-Headers"]
    r = requests.get(stories.url + "/v1/models", headers={"Origin": "https://evil.example"}, timeout=10)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers
    pre = requests.options(stories.url + "/v1/models", timeout=10, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert pre.status_code == 400 and "Access-Control-Allow-Origin" not in pre.headers
    # Off by default: no headers, and OPTIONS is no method of the API.
    port = free_port()
    gw = procs.start([binary("sluice-gateway"), "--host", "127.0.0.1", "--port", str(port), "--controller-address",
                      f"http://127.0.0.1:{free_port()}"], port, "gateway").wait_http("/health")
    pre = requests.options(gw.url + "/v1/models", timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "GET"})
    assert pre.status_code in (404, 405) and "Access-Control-Allow-Origin" not in pre.headers
    r = requests.get(gw.url + "/health", headers={"Origin": "https://app.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in r.headers




# --- a real chat model ---------------------------------------------------------------------------

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_smol_min_tokens_delays_eos(smol):
    c = smol.client
    short = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0, max_tokens=60)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 15
    held = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0, max_tokens=60,
                                     extra_body={"min_tokens": 20})
    assert held.usage.completion_tokens >= 20
    assert held.choices[0].message.content.startswith(short.choices[0].message.content)


def test_smol_logit_bias_steers_the_answer(smol):
    c = smol.client
    paris = requests.post(smol.url + "/tokenize", json={"model": "smol", "prompt": " Paris"}, timeout=30).json()
    assert paris["count"] == 1
    plain = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0, max_tokens=20)
    assert "Paris" in plain.choices[0].message.content
    banned = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0, max_tokens=20,
                                       logit_bias={str(paris["tokens"][0]): -100})
    assert " Paris" not in banned.choices[0].message.content
    forced = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0.8, max_tokens=3, seed=1,
                                       logit_bias={str(paris["tokens"][0]): 100})
    assert forced.choices[0].message.content == " Paris" * 3


def test_smol_special_tokens_shown_when_asked(smol):
    c = smol.client
    kept = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0, max_tokens=30,
                                     extra_body={"skip_special_tokens": False, "include_stop_str_in_output": True})
    assert kept.choices[0].message.content.endswith("<|im_end|>")
    plain = c.chat.completions.create(model="smol", messages=QUESTION, temperature=0, max_tokens=30)
    assert "<|im_end|>" not in plain.choices[0].message.content
    assert kept.choices[0].message.content == plain.choices[0].message.content + "<|im_end|>"


def test_smol_embeddings_follow_meaning(smol):
    texts = ["The cat sat on the mat.", "A cat is sitting on a rug.", "Stock markets fell sharply today.",
             "Shares dropped on Wall Street."]
    r = smol.client.embeddings.create(model="smol", input=texts)
    v = [d.embedding for d in r.data]
    assert len(v[0]) == 576

    def sim(a, b):
        return math.fsum(x * y for x, y in zip(v[a], v[b]))

    assert sim(0, 1) > sim(0, 2) and sim(0, 1) > sim(0, 3)
    assert sim(2, 3) > sim(1, 2) and sim(2, 3) > sim(1, 3)
