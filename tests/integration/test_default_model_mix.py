"""A new user's first minutes: the trio on the default model that `make run` serves
(examples/models/tiny-dummy with random weights: half its vocabulary is byte tokens, so sampled
text is full of partial characters), 200 mixed requests from the official OpenAI client, 8 at a
time: chat and completions, streamed and not, sampled and greedy, with stops, logprobs, n > 1,
echo and seeds. Every one must succeed, every streamed text must equal its non-streamed twin
(same seed), and usage must add up. Before the streaming text fix about a third of these ended
in 502 "stream ended early"."""
import concurrent.futures
import random
import time

import pytest

from conftest import REPO, start_controller, start_gateway, start_worker

openai = pytest.importorskip("openai")

MODEL_DIR = REPO / "examples" / "models" / "tiny-dummy"
N_REQUESTS = 200


def wait_listed(client, name):
    deadline = time.time() + 20
    while time.time() < deadline:
        if any(m.id == name for m in client.models.list().data):
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never listed")


def one_request(client, i):
    rng = random.Random(i)
    kind = rng.choice(["chat", "chat", "completion"])
    stream = rng.random() < 0.5
    params = dict(model="tiny-dummy", max_tokens=rng.randint(1, 48), seed=1000 + i,
                  temperature=rng.choice([0, 0.7, 1.0, 1.3]), top_p=rng.choice([1.0, 0.9, 0.5]))
    if rng.random() < 0.3:
        params["stop"] = [rng.choice(["e", "the", "\n", "a b"])]
    if kind == "chat":
        messages = [{"role": "user", "content": rng.choice(["Hi", "Tell me a story", "héllo wörld ✓", "  spaces  "])}]
        if rng.random() < 0.2:
            params["n"] = 2
        if rng.random() < 0.2 and not stream:
            params.update(logprobs=True, top_logprobs=rng.randint(0, 3))
        if stream:
            params["stream_options"] = {"include_usage": True}
        res = client.chat.completions.create(messages=messages, stream=stream, **params)
    else:
        prompt = rng.choice(["Once upon a time", "1 2 3", "日本語のテキスト", "x"])
        if rng.random() < 0.2 and not stream:
            params.update(logprobs=rng.randint(0, 3), echo=rng.random() < 0.5)
        if stream:
            params["stream_options"] = {"include_usage": True}
        res = client.completions.create(prompt=prompt, stream=stream, **params)
    if not stream:
        return kind, params, res
    chunks = list(res)
    return kind, params, chunks


def streamed_text(kind, chunks):
    texts, usage = {}, None
    for c in chunks:
        if c.usage:
            usage = c.usage
        for ch in c.choices:
            piece = ch.delta.content if kind == "chat" else ch.text
            texts[ch.index] = texts.get(ch.index, "") + (piece or "")
    return texts, usage


def test_two_hundred_mixed_requests_all_succeed(procs):
    ctl = start_controller(procs)
    start_worker(procs, MODEL_DIR, "--load-format", "dummy", "--threads", "2", controller=ctl.url)
    gw = start_gateway(procs, ctl.url)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    wait_listed(client, "tiny-dummy")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: one_request(client, i), range(N_REQUESTS)))
    assert len(results) == N_REQUESTS
    streamed_ok = 0
    for i, (kind, params, res) in enumerate(results):
        if isinstance(res, list):
            texts, usage = streamed_text(kind, res)
            assert usage is not None, f"request {i}: no usage in the stream"
            assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
            finishes = [ch.finish_reason for c in res for ch in c.choices if ch.finish_reason]
            assert len(finishes) == params.get("n", 1), f"request {i}: finish reasons {finishes}"
            assert all(f in ("stop", "length") for f in finishes), f"request {i}: {finishes}"
            streamed_ok += 1
        else:
            assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
            for ch in res.choices:
                assert ch.finish_reason in ("stop", "length"), f"request {i}: {ch.finish_reason}"
    assert streamed_ok > 50, "the mix should stream about half of its requests"


def test_streamed_text_equals_the_answer_with_the_same_seed(procs):
    ctl = start_controller(procs)
    start_worker(procs, MODEL_DIR, "--load-format", "dummy", "--threads", "2", controller=ctl.url)
    gw = start_gateway(procs, ctl.url)
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    wait_listed(client, "tiny-dummy")
    for i in range(20):
        params = dict(model="tiny-dummy", max_tokens=40, seed=i, temperature=1.0,
                      messages=[{"role": "user", "content": f"story {i}"}])
        whole = client.chat.completions.create(**params).choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **params)
                           if c.choices)
        assert streamed == whole, f"seed {i}"
