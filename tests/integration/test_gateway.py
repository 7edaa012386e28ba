"""sluice-gateway against the real controller and scripted fake workers: the OpenAI SDK's
view of success and of every error path.

The fake worker stands in for sluice-worker's POST /generate (docs/PROTOCOL.md): it registers
with the real controller and answers each request the way its `mode` says (normal stream, die
mid-stream, fail before the first token, stall, flood, 400...)."""
import json
import signal
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import requests

from conftest import binary, free_port, start_controller, start_gateway

TOKENS = ["Hi", " there", ",", " friend", "!", " How", " are", " you", "?"]


def reply_tokens(body):
    """The tokens this fake generates: a fixed story that names the seed it was given."""
    seed = body.get("seed")
    toks = list(TOKENS)
    toks.insert(2, f" s{seed}" if seed is not None else " s-")
    return toks


class FakeWorker:
    def __init__(self, model="fake-model", mode="ok"):
        self.model = model
        self.mode = mode          # what the next /generate does; see _generate
        self.fail_times = 0       # with mode "fail_first": how many requests fail before the rest succeed
        self.requests = []        # bodies of every /generate received
        self.failed = 0
        self.disconnected = threading.Event()  # a stalled stream saw its client go
        self.frame_delay = 0.0
        self.craft = None         # when set, frame -> frame: rewrites every frame sent (test_security.py)
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._json(200, {"status": "ok"})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(n) if n else b""
                if self.path == "/worker_get_status":
                    self._json(200, {"model_names": [worker.model], "speed": 1, "queue_length": 0})
                elif self.path == "/generate":
                    body = json.loads(raw or b"{}")
                    worker.requests.append(body)
                    worker._generate(self, body)
                else:
                    self._json(404, {"error": {"message": "no route"}})

            def _json(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    # --- behaviour ------------------------------------------------------------------------
    def _generate(self, h, body):
        mode = self.mode
        if mode == "fail_first":
            if self.failed < self.fail_times:
                self.failed += 1
                return self._drop(h)
            mode = "ok"
        if mode == "drop":
            self.failed += 1
            return self._drop(h)
        if mode == "500":
            self.failed += 1
            return h._json(500, {"error": {"message": "worker exploded", "type": "server_error",
                                           "param": None, "code": None}})
        if mode == "too_long":
            return h._json(400, {"error": {"message": "This model's maximum context length is 16 tokens. "
                                           "However, your prompt has 20 tokens, which leaves no room.",
                                           "type": "invalid_request_error", "param": "messages", "code": None}})
        h.send_response(200)
        h.send_header("Content-Type", "application/x-ndjson")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        if mode == "headers_only":
            # 200 and then the connection breaks before any frame.
            self.failed += 1
            h.wfile.flush()
            return self._drop(h)
        toks = reply_tokens(body) if mode != "nul" else ["a\x00b", "c"]
        max_tokens = body.get("max_tokens") or len(toks)
        lp = body.get("logprobs")
        prompt_tokens = 5
        try:
            if mode == "stall":
                # Streams one token, then keeps the connection busy until the client goes.
                self._frame(h, self._frame_for(["Hi"], 1, prompt_tokens, lp, None, body))
                deadline = time.time() + 15
                while time.time() < deadline:
                    time.sleep(0.05)
                    self._chunk(h, b"\n")  # an empty ndjson line: harmless keep-busy bytes
                return
            if mode == "hang_mid":
                # Two tokens, then silence with the connection open: a hung worker.
                for i, t in enumerate(toks[:2]):
                    self._frame(h, self._frame_for([t], i + 1, prompt_tokens, None, None, body))
                deadline = time.time() + 15
                while time.time() < deadline and not self.disconnected.is_set():
                    time.sleep(0.05)
                return
            if mode == "flood":
                # Large frames as fast as the gateway takes them, until it hangs up.
                big = self._frame_for(["x" * 16384], 1, prompt_tokens, None, None, body)
                deadline = time.time() + 15
                while time.time() < deadline:
                    self._frame(h, big)
                return
            out = toks[:max_tokens]
            for i, t in enumerate(out):
                last = i == len(out) - 1
                finish = ("length" if max_tokens < len(toks) else "stop") if last else None
                if mode == "die_mid" and i == 2:
                    h.wfile.flush()
                    h.connection.shutdown(socket.SHUT_RDWR)
                    h.close_connection = True
                    return
                if (mode == "error_frame" and i == 2) or (mode == "error_first" and i == 0):
                    if mode == "error_first":
                        self.failed += 1
                    frame = self._frame_for([], i, prompt_tokens, None, "error", body)
                    frame["error"] = {"message": "CUDA fell over", "code": 500}
                    self._frame(h, frame)
                    break
                frame = self._frame_for([t], i + 1, prompt_tokens, lp, finish, body)
                if i == 0 and body.get("echo"):
                    frame["prompt_text"] = body.get("prompt", "")
                self._frame(h, frame)
                if self.frame_delay:
                    time.sleep(self.frame_delay)
            self._chunk(h, b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.disconnected.set()
            h.close_connection = True

    def _drop(self, h):
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    @staticmethod
    def _frame_for(toks, done, prompt_tokens, lp, finish, body):
        frame = {"text": "".join(toks), "token_ids": [100 + len(t) for t in toks],
                 "finish_reason": finish,
                 "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": done}}
        if lp is not None:
            frame["logprobs"] = [{"token_id": 100 + len(t), "token": t, "logprob": -0.5,
                                  "top_logprobs": [{"token_id": 100 + k, "token": f"alt{k}", "logprob": -1.0 - k}
                                                   for k in range(lp)]} for t in toks]
        return frame

    def _frame(self, h, frame):
        if self.craft:
            frame = self.craft(frame)
        self._chunk(h, (json.dumps(frame) + "\n").encode())

    @staticmethod
    def _chunk(h, data):
        h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        h.wfile.flush()

    # --- controller ---------------------------------------------------------------------------
    def register(self, controller_url, name=None):
        r = requests.post(controller_url + "/register_worker", timeout=5, json={
            "worker_name": name or self.url, "check_heart_beat": False,
            "worker_status": {"model_names": [self.model], "speed": 1, "queue_length": 0}})
        r.raise_for_status()
        return self

    def close(self):
        self.server.shutdown()
        self.server.server_close()


MODEL = "fake-model"


@pytest.fixture
def workers():
    made = []

    def make(mode="ok", model=MODEL):
        w = FakeWorker(model=model, mode=mode)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


@pytest.fixture
def stack(procs, workers):
    """Controller, one fake worker and a gateway; returns (gateway, worker, controller)."""
    ctl = start_controller(procs)
    w = workers().register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    return gw, w, ctl


def client(gw, key="none"):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=10)


def sse_events(resp):
    """data: payloads of an SSE response, in order."""
    out = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            out.append(line[6:].decode())
    return out


def expected_text(seed=None, max_tokens=None):
    toks = reply_tokens({"seed": seed} if seed is not None else {})
    return "".join(toks[:max_tokens] if max_tokens else toks)


# --- success paths ------------------------------------------------------------------------------

def test_models_list_and_get(stack):
    gw, _, _ = stack
    c = client(gw)
    models = c.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert models.data[0].object == "model" and models.data[0].owned_by == "sluice"
    assert models.data[0].created > 1_600_000_000
    assert c.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_models_cached_briefly(procs, workers):
    ctl = start_controller(procs)
    workers().register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--models-cache-ms", "2000")
    c = client(gw)
    assert [m.id for m in c.models.list().data] == [MODEL]
    workers(model="second-model").register(ctl.url)
    # Inside the cache window the gateway does not ask the controller again.
    assert [m.id for m in c.models.list().data] == [MODEL]
    time.sleep(2.2)
    assert sorted(m.id for m in c.models.list().data) == [MODEL, "second-model"]


def test_chat_non_stream(stack):
    gw, w, _ = stack
    r = client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=4, temperature=0, seed=3, stop=["zz"],
                                           presence_penalty=0.5, user="u1")
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion" and r.model == MODEL
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == expected_text(3, 4)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)
    body = w.requests[-1]
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 4 and body["temperature"] == 0 and body["seed"] == 3
    assert body["stop"] == ["zz"] and body["presence_penalty"] == 0.5
    assert "model" not in body and "user" not in body


def test_chat_stream_with_usage(stack):
    gw, _, _ = stack
    chunks = list(client(gw).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text()
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(reply_tokens({}))
    assert all(c.id == chunks[0].id and c.object == "chat.completion.chunk" for c in chunks)


def test_stream_ends_with_done(stack):
    gw, _, _ = stack
    r = requests.post(gw.url + "/v1/completions", stream=True, timeout=10,
                      json={"model": MODEL, "prompt": "x", "stream": True, "max_tokens": 3})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == expected_text(None, 3)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all("usage" not in c for c in chunks), "no usage without include_usage"


def test_n_choices_each_own_call_with_seed(stack):
    gw, w, _ = stack
    r = client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                           n=3, seed=10)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    for c in r.choices:
        assert c.message.content == expected_text(10 + c.index)
    assert sorted(b["seed"] for b in w.requests) == [10, 11, 12]
    assert r.usage.prompt_tokens == 5, "the prompt is counted once"
    assert r.usage.completion_tokens == 3 * len(reply_tokens({}))


def test_one_controller_round_trip_per_request(stack):
    gw, w, ctl = stack
    c = client(gw)
    c.completions.create(model=MODEL, prompt="x", max_tokens=1)
    c.completions.create(model=MODEL, prompt=["a", "b"], n=3, max_tokens=1)
    list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=2, stream=True))
    assert len(w.requests) == 1 + 6 + 2
    text = requests.get(ctl.url + "/metrics", timeout=5).text
    assert f'sluice_controller_dispatch_total{{model="{MODEL}",result="ok"}} 3' in text


def test_n_choices_streamed(stack):
    gw, _, _ = stack
    chunks = list(client(gw).completions.create(model=MODEL, prompt="x", n=2, seed=1, stream=True))
    texts = {0: "", 1: ""}
    for c in chunks:
        for ch in c.choices:
            texts[ch.index] += ch.text
    assert texts == {0: expected_text(1), 1: expected_text(2)}


def test_completion_prompt_shapes(stack):
    gw, w, _ = stack
    c = client(gw)
    r = c.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=2)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert sorted(b["prompt"] for b in w.requests[-2:]) == ["a", "b"]
    assert r.usage.prompt_tokens == 10
    c.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=2)
    assert w.requests[-1]["prompt_token_ids"] == [1, 2, 3]
    r = c.completions.create(model=MODEL, prompt=[[4], [5, 6]], max_tokens=2, n=2)
    assert len(r.choices) == 4
    assert sorted(json.dumps(b["prompt_token_ids"]) for b in w.requests[-4:]) == ["[4]", "[4]", "[5, 6]", "[5, 6]"]


def test_completion_echo_and_logprobs(stack):
    gw, _, _ = stack
    r = client(gw).completions.create(model=MODEL, prompt="Once", max_tokens=2, echo=True, logprobs=2)
    ch = r.choices[0]
    assert ch.text == "Once" + expected_text(None, 2)
    assert ch.logprobs.tokens == ["Hi", " there"]
    assert ch.logprobs.token_logprobs == [-0.5, -0.5]
    assert ch.logprobs.text_offset == [4, 6]
    assert ch.logprobs.top_logprobs[0] == {"alt0": -1.0, "alt1": -2.0}


def test_chat_logprobs(stack):
    gw, _, _ = stack
    c = client(gw)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                  max_tokens=2, logprobs=True, top_logprobs=1)
    content = r.choices[0].logprobs.content
    assert [t.token for t in content] == ["Hi", " there"]
    assert content[0].logprob == -0.5 and content[0].bytes == [72, 105]
    assert content[0].top_logprobs[0].token == "alt0"
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=2, logprobs=True, stream=True))
    streamed = [t.token for ch in chunks for choice in ch.choices if choice.logprobs
                for t in choice.logprobs.content]
    assert streamed == ["Hi", " there"]


def test_nul_characters_pass_through(procs, workers):
    """A byte-level vocabulary has a token for byte 0 (random weights pick it): the worker sends
    it as \u0000 and the client must get it back, not a 'malformed frame' error."""
    ctl = start_controller(procs)
    workers(mode="nul").register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    c = client(gw)
    r = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "a\x00bc"
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                            stream=True, logprobs=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "a\x00bc"
    streamed = [t.token for ch in chunks for choice in ch.choices if choice.logprobs
                for t in choice.logprobs.content]
    assert streamed == ["a\x00b", "c"]
    r = c.completions.create(model=MODEL, prompt="x", logprobs=0)
    assert r.choices[0].text == "a\x00bc"
    assert r.choices[0].logprobs.tokens == ["a\x00b", "c"]
    assert r.choices[0].logprobs.text_offset == [0, 3]


def test_health_and_metrics(stack):
    gw, _, _ = stack
    client(gw).completions.create(model=MODEL, prompt="x", max_tokens=2)
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'sluice_gateway_requests_total{route="/v1/completions",status="200"} 1' in text
    assert "sluice_gateway_time_to_first_token_seconds_count 1" in text
    assert "sluice_gateway_inter_token_latency_seconds_count 1" in text
    assert "sluice_gateway_e2e_request_latency_seconds_count 1" in text
    assert "sluice_gateway_prompt_tokens_total 5" in text
    assert "sluice_gateway_completion_tokens_total 2" in text
    page = requests.get(gw.url + "/", timeout=5)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text


# --- client errors ------------------------------------------------------------------------------

def test_bad_requests_are_400(stack):
    gw, w, _ = stack
    c = client(gw)
    msgs = [{"role": "user", "content": "hi"}]
    for kwargs in [dict(temperature=2.5), dict(top_p=0), dict(top_p=1.5), dict(top_p=-1), dict(n=0),
                   dict(n=129), dict(max_tokens=0), dict(presence_penalty=-3), dict(frequency_penalty=2.5),
                   dict(stop=["a", "b", "c", "d", "e"]), dict(top_logprobs=3), dict(seed=1.5),
                   dict(logit_bias={"abc": 5}), dict(logit_bias={"-1": 5}), dict(logit_bias={"5": 500}),
                   dict(logit_bias={"5": -100.5}), dict(logit_bias={"5": "1"})]:
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL, messages=msgs, **kwargs)
        assert e.value.body["param"] == next(iter(kwargs)), kwargs
    for ids in [[-1], [1.5], "3", list(range(17))]:
        with pytest.raises(openai.BadRequestError) as e:
            c.completions.create(model=MODEL, prompt="x", extra_body={"stop_token_ids": ids})
        assert e.value.body["param"] == "stop_token_ids", ids
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model=MODEL, prompt="x", logprobs=21)
    r = requests.post(gw.url + "/v1/chat/completions", data=b"{not json", timeout=5,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = requests.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": "hi"}, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    assert w.requests == [], "nothing invalid reaches a worker"


def test_token_id_fields_pass_through(stack):
    """stop_token_ids and logit_bias reach the worker as given: it alone knows the vocabulary
    (and applies the stops)."""
    gw, w, _ = stack
    client(gw).completions.create(model=MODEL, prompt="x", max_tokens=2, logit_bias={"7": -100, "9": 2.5},
                                  extra_body={"stop_token_ids": [2, 99999]})
    assert w.requests[-1]["stop_token_ids"] == [2, 99999]
    assert w.requests[-1]["logit_bias"] == {"7": -100, "9": 2.5}


def test_prompt_too_long_forwarded(procs, workers):
    ctl = start_controller(procs)
    workers(mode="too_long").register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    with pytest.raises(openai.BadRequestError) as e:
        client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "16" in e.value.message and "20" in e.value.message


def test_unknown_model_404(stack):
    gw, _, _ = stack
    with pytest.raises(openai.NotFoundError) as e:
        client(gw).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["param"] == "model"


def test_auth_keys(procs, workers, tmp_path):
    ctl = start_controller(procs)
    workers().register(ctl.url)
    keyfile = tmp_path / "keys"
    keyfile.write_text("filekey\n")
    gw = start_gateway(procs, ctl.url, "--api-keys", "k1,k2", "--api-key-file", str(keyfile))
    with pytest.raises(openai.AuthenticationError):
        client(gw, "wrong").models.list()
    r = requests.get(gw.url + "/v1/models", timeout=5)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["WWW-Authenticate"] == "Bearer"
    for key in ["k1", "k2", "filekey"]:
        assert client(gw, key).completions.create(model=MODEL, prompt="x", max_tokens=1).choices
    assert requests.get(gw.url + "/health", timeout=5).status_code == 200


def test_bad_flags_refuse_to_start(tmp_path):
    gw = binary("sluice-gateway")
    for args in (["--api-key-file", str(tmp_path / "missing")], ["--port", "70000"], ["--log-level", "loud"],
                 ["--no-such-flag"]):
        p = subprocess.run([gw, "--port", "0", *args], capture_output=True, timeout=10)
        assert p.returncode != 0, args
        assert p.stderr, args


def test_body_too_large_413(procs, workers):
    ctl = start_controller(procs)
    workers().register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--max-body-bytes", "4096")
    with pytest.raises(openai.APIStatusError) as e:
        client(gw).completions.create(model=MODEL, prompt="x" * 10000)
    assert e.value.status_code == 413
    assert client(gw).completions.create(model=MODEL, prompt="x" * 100, max_tokens=1).choices


def test_concurrency_limit_429(procs, workers):
    ctl = start_controller(procs)
    w = workers(mode="stall").register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--max-concurrent-requests", "1")
    held = requests.post(gw.url + "/v1/completions", stream=True, timeout=10,
                         json={"model": MODEL, "prompt": "x", "stream": True})
    assert held.status_code == 200
    lines = held.iter_lines()  # kept: a dropped line iterator closes the connection
    next(lines)
    with pytest.raises(openai.RateLimitError) as e:
        client(gw).completions.create(model=MODEL, prompt="x")
    assert e.value.response.headers["Retry-After"] == "1"
    held.close()
    assert w.disconnected.wait(5)
    w.mode = "ok"
    deadline = time.time() + 5
    while True:  # the slot frees once the gateway has seen the close
        try:
            client(gw).completions.create(model=MODEL, prompt="x", max_tokens=1)
            break
        except openai.RateLimitError:
            assert time.time() < deadline
            time.sleep(0.05)


# --- upstream failures --------------------------------------------------------------------------

def test_worker_dies_mid_stream(procs, workers):
    ctl = start_controller(procs)
    workers(mode="die_mid").register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    r = requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=10,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    events = sse_events(r)
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])
    assert "error" in err and err["error"]["message"]
    with pytest.raises(openai.APIError):
        for _ in client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                    stream=True):
            pass
    with pytest.raises(openai.InternalServerError) as e:
        client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 502


def test_hung_worker_hits_the_idle_timeout(procs, workers):
    """A worker that goes silent mid-stream (a hung GPU) is failed after
    --worker-idle-timeout-ms: the client gets an error event and [DONE], not a hang."""
    ctl = start_controller(procs)
    workers(mode="hang_mid").register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--worker-idle-timeout-ms", "1000")
    t0 = time.time()
    r = requests.post(gw.url + "/v1/completions", stream=True, timeout=10,
                      json={"model": MODEL, "prompt": "x", "stream": True})
    events = sse_events(r)
    assert time.time() - t0 < 10  # 1 s of silence, as curl measures it over a 5 s window
    assert events[-1] == "[DONE]"
    assert "error" in json.loads(events[-2])
    assert any(json.loads(e).get("choices") and json.loads(e)["choices"][0].get("text") for e in events[:-2])


def test_worker_error_frame(procs, workers):
    ctl = start_controller(procs)
    workers(mode="error_frame").register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    with pytest.raises(openai.APIError) as e:
        for _ in client(gw).completions.create(model=MODEL, prompt="x", stream=True):
            pass
    assert "CUDA fell over" in e.value.message
    with pytest.raises(openai.InternalServerError) as e:
        client(gw).completions.create(model=MODEL, prompt="x")
    assert e.value.status_code == 500


@pytest.mark.parametrize("how", ["drop", "500", "headers_only", "error_first"])
def test_failure_before_first_token_retried(procs, workers, how):
    """One worker always fails before its first token (connection dropped, or a 500); the other
    works. The controller's shortest_queue sends two requests to two different workers, so
    the bad one is hit at least once, and the client must never notice."""
    ctl = start_controller(procs)
    bad = workers(mode=how).register(ctl.url)
    good = workers(mode="ok").register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    text = client(gw).completions.create(model=MODEL, prompt="x").choices[0].text
    assert text == expected_text()
    text = "".join(c.choices[0].text for c in client(gw).completions.create(
        model=MODEL, prompt="x", stream=True) if c.choices)
    assert text == expected_text()
    assert bad.failed >= 1 and len(good.requests) == 2
    metrics = requests.get(gw.url + "/metrics", timeout=5).text
    assert f"sluice_gateway_upstream_retries_total {bad.failed}" in metrics


def test_dead_worker_address_retried(procs, workers):
    """A registered worker whose port is closed: requests still succeed through the live one."""
    ctl = start_controller(procs)
    dead_port = free_port()
    good = workers().register(ctl.url)
    FakeWorker.register(good, ctl.url, name=f"http://127.0.0.1:{dead_port}")
    gw = start_gateway(procs, ctl.url)
    for _ in range(6):
        r = client(gw).completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert r.choices[0].text == expected_text(None, 2)


def test_controller_down_503_fast(procs, workers):
    ctl = start_controller(procs)
    workers().register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    ctl.kill()
    t0 = time.time()
    with pytest.raises(openai.InternalServerError) as e:
        client(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 503 and e.value.response.headers.get("Retry-After")
    assert time.time() - t0 < 1.5
    r = requests.get(gw.url + "/v1/models", timeout=5)
    assert r.status_code == 503


def test_controller_hangs_503_bounded(procs):
    """A controller that accepts connections but never answers costs at most the timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    try:
        gw = start_gateway(procs, f"http://127.0.0.1:{silent.getsockname()[1]}")
        t0 = time.time()
        r = requests.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=5)
        assert r.status_code == 503
        assert 0.4 < time.time() - t0 < 2.0
    finally:
        silent.close()


def test_no_worker_for_known_model_503(procs, workers):
    ctl = start_controller(procs)
    w = workers().register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--models-cache-ms", "0")
    assert client(gw).models.list().data  # the gateway learns the model
    requests.post(ctl.url + "/refresh_all_workers", timeout=5)
    w.close()
    requests.post(ctl.url + "/refresh_all_workers", timeout=5)
    r = requests.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=5)
    assert r.status_code == 503 and r.headers.get("Retry-After")
    r = requests.post(gw.url + "/v1/completions", json={"model": "never-seen", "prompt": "x"}, timeout=5)
    assert r.status_code == 404


def test_client_disconnect_cancels_upstream(procs, workers):
    ctl = start_controller(procs)
    w = workers(mode="stall").register(ctl.url)
    gw = start_gateway(procs, ctl.url)
    r = requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=10,
                      json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    first = next(r.iter_lines())
    assert first.startswith(b"data: ")
    r.close()
    assert w.disconnected.wait(5), "the worker's connection was not closed"
    # The same for a client that gives up waiting on a non-streamed answer.
    w.disconnected.clear()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=0.5)
    assert w.disconnected.wait(5), "the worker's connection was not closed"
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert "sluice_gateway_active_requests 0" in text
    assert 'sluice_gateway_requests_total{route="/v1/completions",status="499"} 1' in text


def test_sigterm_with_streams_in_flight(procs, workers):
    """SIGTERM waits for open streams up to --drain-timeout, then ends them with an error event
    and [DONE], cancels their upstream calls and exits cleanly (under SANITIZE=1 this also
    checks that nothing leaks)."""
    ctl = start_controller(procs)
    w = workers(mode="stall").register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--drain-timeout", "0.5")
    held = requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=10,
                         json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True})
    lines = held.iter_lines()
    next(lines)
    t0 = time.time()
    gw.p.send_signal(signal.SIGTERM)
    rest = [line[6:].decode() for line in lines if line.startswith(b"data: ")]
    assert time.time() - t0 >= 0.4, "the stream was cut before the drain timeout"
    assert rest[-1] == "[DONE]"
    assert "shutting down" in json.loads(rest[-2])["error"]["message"]
    assert gw.p.wait(timeout=10) == 0, gw.output()
    assert w.disconnected.wait(5)


def test_slow_client_dropped(procs, workers):
    """A client that stops reading while the worker floods: once the gateway's buffer bound is
    passed it drops the client and closes the worker's stream, instead of buffering forever."""
    ctl = start_controller(procs)
    w = workers(mode="flood").register(ctl.url)
    gw = start_gateway(procs, ctl.url, "--max-stream-buffer", "65536")
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": MODEL, "prompt": "x", "stream": True}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        assert w.disconnected.wait(10), "the gateway kept reading from the worker for a stalled client"
        assert gw.p.poll() is None
        text = requests.get(gw.url + "/metrics", timeout=5).text
        assert "sluice_gateway_active_requests 0" in text
    finally:
        s.close()
