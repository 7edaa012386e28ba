"""End to end: the real controller, two real CPU workers on stories260K and the gateway,
driven through the OpenAI SDK. Skips when a binary or the test data is missing."""
import re
import time

import openai
import pytest
import requests

from conftest import binary, free_port, need_stories, reference, start_controller, start_worker

MODEL = "stories260K"
PROMPT = "Once upon a time"


@pytest.fixture
def trio(procs):
    need_stories()
    binary("sluice-worker")
    gw_bin = binary("sluice-gateway")
    ctl = start_controller(procs)
    workers = [start_worker(procs, None, "--model-names", MODEL, controller=ctl.url) for _ in range(2)]
    deadline = time.time() + 20
    while len(requests.get(ctl.url + "/workers", timeout=5).json()["workers"]) < 2:
        assert time.time() < deadline, "workers did not register"
        time.sleep(0.05)
    port = free_port()
    gw = procs.start([gw_bin, "--host", "127.0.0.1", "--port", str(port), "--controller-address", ctl.url],
                     port, "gateway").wait_http("/health")
    return gw, workers


def client(gw):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=60)


def requests_served(worker):
    text = requests.get(worker.url + "/metrics", timeout=5).text
    return int(re.search(r"^sluice_worker_requests_total (\d+)", text, re.M).group(1))


def test_greedy_completion_matches_reference(trio):
    gw, _ = trio
    ref = reference()["prompts"][PROMPT]
    r = client(gw).completions.create(model=MODEL, prompt=PROMPT, max_tokens=len(ref["greedy_ids"]),
                                      temperature=0)
    assert r.choices[0].text == ref["greedy_text"]
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref["prompt_ids"])
    assert r.usage.completion_tokens == len(ref["greedy_ids"])
    streamed = "".join(c.choices[0].text for c in client(gw).completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=len(ref["greedy_ids"]), temperature=0, stream=True) if c.choices)
    assert streamed == ref["greedy_text"]


def test_stop_string(trio):
    gw, _ = trio
    ref = reference()["prompts"][PROMPT]["greedy_text"]
    r = client(gw).completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0, stop=["Lily"])
    assert r.choices[0].text == ref[:ref.index("Lily")]
    assert r.choices[0].finish_reason == "stop"


def test_chat_stream_and_not(trio):
    gw, _ = trio
    c = client(gw)
    msgs = [{"role": "user", "content": "Tell me a story"}]
    r = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    assert r.choices[0].message.content and r.usage.completion_tokens <= 12
    chunks = list(c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens


def test_seeds_reproducible_and_n(trio):
    gw, _ = trio
    c = client(gw)
    a = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=1234, n=2)
    b = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=1.0, seed=1234, n=2)
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]
    assert sorted(ch.index for ch in a.choices) == [0, 1]
    assert a.usage.prompt_tokens == 5
    assert a.choices[0].text != a.choices[1].text, "choice i samples with seed + i"
    u = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=1.0, n=2)
    assert u.choices[0].text != u.choices[1].text, "unseeded choices sample independently"


def test_requests_spread_over_both_workers(trio):
    gw, workers = trio
    before = [requests_served(w) for w in workers]
    for _ in range(16):
        client(gw).completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    after = [requests_served(w) for w in workers]
    served = [a - b for a, b in zip(after, before)]
    assert sum(served) == 16 and all(s > 0 for s in served), served


def test_logprobs_and_echo(trio):
    gw, _ = trio
    c = client(gw)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True)
    ch = r.choices[0]
    ref = reference()["prompts"][PROMPT]
    assert ch.text.startswith(PROMPT) and ref["greedy_text"].startswith(ch.text[len(PROMPT):])
    # Echo with logprobs: the prompt's tokens lead (the first has none), then the 6 generated.
    n_prompt = len(ref["prompt_ids"])
    assert len(ch.logprobs.tokens) == n_prompt + 6
    assert ch.logprobs.token_logprobs[0] is None and ch.logprobs.top_logprobs[0] is None
    assert all(lp <= 0 for lp in ch.logprobs.token_logprobs[1:])
    assert all(len(t) == 2 for t in ch.logprobs.top_logprobs[n_prompt:])
    assert ch.logprobs.text_offset[0] == 0 and ch.logprobs.text_offset[n_prompt] == len(PROMPT)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                  temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.bytes == list(t.token.encode()) for t in content)


def test_client_disconnect_aborts_on_worker(trio):
    gw, workers = trio

    def aborted():
        return sum(int(re.search(r"^sluice_worker_requests_aborted_total (\d+)",
                                 requests.get(w.url + "/metrics", timeout=5).text, re.M).group(1))
                   for w in workers)

    before = aborted()
    r = requests.post(gw.url + "/v1/completions", stream=True, timeout=30,
                      json={"model": MODEL, "prompt": PROMPT, "max_tokens": 400, "stream": True,
                            "ignore_eos": True})
    lines = r.iter_lines()
    next(lines)
    r.close()
    deadline = time.time() + 10
    while aborted() == before:
        assert time.time() < deadline, "the worker never saw the client go"
        time.sleep(0.05)


def test_token_ids_checked_and_applied_by_the_worker(trio):
    """The gateway checks shape and sign; the worker knows the vocabulary: its 400 comes back
    naming the field. Valid stop_token_ids reach the worker and end the generation."""
    gw, _ = trio
    c = client(gw)
    for extra, param in [({"stop_token_ids": [512]}, "stop_token_ids"), ({"logit_bias": {"600": 1}}, "logit_bias")]:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, extra_body=extra)
        assert e.value.body["param"] == param and "512" in e.value.message
    ref = reference()["prompts"][PROMPT]
    stop_id = ref["greedy_ids"][5]
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64, temperature=0,
                             extra_body={"stop_token_ids": [stop_id]})
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == ref["greedy_ids"].index(stop_id) + 1
