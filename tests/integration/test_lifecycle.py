"""Stopping and restarting the trio with the real binaries.

SIGTERM drains: the worker leaves the controller at once, refuses new work with 503, finishes
what it runs (or, past --drain-timeout, ends it with an error frame) and exits 0; the gateway
closes its listener, answers 503 on connections already open and finishes its streams with
[DONE]. A second signal stops a program at once, without libuv's double-close abort. A model
whose workers (or controller) are restarting answers 503 with Retry-After, never 404."""
import http.client
import json
import signal
import threading
import time

import pytest
import requests

from conftest import Proc, binary, free_port, need_stories, slow_model, start_controller, start_gateway, start_worker

pytestmark = pytest.mark.timeout(180)

PROMPT = "Once upon a time"


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, what
        time.sleep(0.02)


def listed(ctl, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return [w["name"] for w in requests.get(ctl.url + "/workers", headers=headers, timeout=5).json()["workers"]]


def log_of(proc):
    proc.log.flush()
    return proc.log_path.read_text(errors="replace")


def assert_no_crash(proc):
    log = log_of(proc)
    for bad in ("Assertion", "Sanitizer", "runtime error"):
        assert bad not in log, log[-4000:]


def start_slow_worker(procs, tmp_path, *extra, controller=None):
    return start_worker(procs, tmp_path / "slow", *slow_model(tmp_path / "slow"), "--model-names", "slow",
                        *extra, controller=controller)


def sse_payloads(lines):
    return [line[6:].decode() for line in lines if line.startswith(b"data: ")]


# --- the worker's drain ------------------------------------------------------------------------

def test_worker_sigterm_finishes_the_stream_and_leaves_at_once(procs, tmp_path):
    ctl = start_controller(procs)
    w = start_slow_worker(procs, tmp_path, "--heartbeat-interval", "0.2", controller=ctl.url)
    wait_until(lambda: listed(ctl) == [w.url], 10, "the worker did not register")
    gw = start_gateway(procs, ctl.url)
    r = requests.post(gw.url + "/v1/completions", stream=True, timeout=60, json={
        "model": "slow", "prompt": PROMPT, "max_tokens": 300, "temperature": 0, "ignore_eos": True,
        "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200
    lines = r.iter_lines()
    first = next(line for line in lines if line)
    w.p.send_signal(signal.SIGTERM)

    # The controller forgets it at once, not after its heartbeats expire (30 s here).
    wait_until(lambda: w.url not in listed(ctl), 2, "the controller still lists a draining worker")
    assert w.p.poll() is None, "the worker exited instead of finishing its stream"
    # New work is refused with a retryable answer; the worker is alive but not ready.
    d = requests.post(w.url + "/generate", json={"prompt": "x", "max_tokens": 2}, timeout=5)
    assert d.status_code == 503 and d.headers.get("Retry-After"), d.text
    assert d.json()["error"]["message"] and "shutting down" in d.json()["error"]["message"]
    h = requests.get(w.url + "/health", timeout=5)
    assert h.status_code == 503 and h.json()["status"] == "draining"
    # Through the gateway the model has no worker now: "retry", not "no such model".
    g = requests.post(gw.url + "/v1/completions", json={"model": "slow", "prompt": "x", "max_tokens": 2}, timeout=10)
    assert g.status_code == 503 and g.headers.get("Retry-After"), g.text
    assert w.p.poll() is None, "the stream should still be running: make the generation longer"

    payloads = sse_payloads([first] + list(lines))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert not any("error" in c for c in chunks), chunks[-3:]
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 300
    assert w.p.wait(timeout=30) == 0
    assert_no_crash(w)
    assert "unregistered" in log_of(ctl)


def test_worker_drain_timeout_ends_generations_with_an_error_frame(procs, tmp_path):
    w = start_slow_worker(procs, tmp_path, "--drain-timeout", "0.3")
    r = requests.post(w.url + "/generate", stream=True, timeout=60, json={
        "prompt": PROMPT, "max_tokens": 3000, "temperature": 0, "ignore_eos": True})
    lines = r.iter_lines()
    frames = [json.loads(next(line for line in lines if line))]
    t0 = time.time()
    w.p.send_signal(signal.SIGTERM)
    frames += [json.loads(line) for line in lines if line]
    last = frames[-1]
    assert last["finish_reason"] == "error", last
    assert "shutting down" in last["error"]["message"] and "drain timeout" in last["error"]["message"]
    assert sum(len(f["token_ids"]) for f in frames) < 3000
    assert w.p.wait(timeout=15) == 0
    assert time.time() - t0 < 10
    assert_no_crash(w)


# --- the gateway's drain -----------------------------------------------------------------------

def test_gateway_sigterm_finishes_streams_and_refuses_new_requests(procs, tmp_path):
    ctl = start_controller(procs)
    w = start_slow_worker(procs, tmp_path, controller=ctl.url)
    wait_until(lambda: listed(ctl) == [w.url], 10, "the worker did not register")
    gw = start_gateway(procs, ctl.url)
    # A keep-alive connection opened before the signal: the gateway still reads requests on
    # it, and answers them 503.
    idle = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    idle.request("GET", "/health")
    ready = idle.getresponse()
    assert ready.status == 200
    ready.read()

    r = requests.post(gw.url + "/v1/chat/completions", stream=True, timeout=60, json={
        "model": "slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 300,
        "temperature": 0, "ignore_eos": True, "stream": True})
    lines = r.iter_lines()
    first = next(line for line in lines if line)
    gw.p.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining" in log_of(gw), 5, "the gateway did not start draining")

    with pytest.raises(requests.ConnectionError):
        requests.get(gw.url + "/health", timeout=2)
    idle.request("POST", "/v1/completions", body=json.dumps({"model": "slow", "prompt": "x"}),
                 headers={"Content-Type": "application/json"})
    resp = idle.getresponse()
    body = json.loads(resp.read())
    assert resp.status == 503 and resp.getheader("Retry-After") and body["error"]["message"]
    idle.close()
    assert gw.p.poll() is None, "the gateway exited with a stream open"

    payloads = sse_payloads([first] + list(lines))
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert not any("error" in c for c in chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert gw.p.wait(timeout=30) == 0
    assert_no_crash(gw)


# --- a second signal ----------------------------------------------------------------------------

def busy_loop_request(url):
    """A 10 MB body: the worker parses it on its loop, so signals sent meanwhile are handled
    together in the next iteration (where the old code closed its handles twice)."""
    big = json.dumps({"prompt": "x", "max_tokens": 2, "pad": ["a" * 100] * 100000}).encode()

    def go():
        try:
            requests.post(url + "/generate", data=big, timeout=10)
        except requests.RequestException:
            pass

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_second_signal_stops_at_once_without_abort(procs, tmp_path):
    ctl = start_controller(procs)
    for i in range(5):
        w = start_slow_worker(procs, tmp_path, "--heartbeat-interval", "0.2", controller=ctl.url)
        gen = requests.post(w.url + "/generate", stream=True, timeout=60, json={
            "prompt": PROMPT, "max_tokens": 3000, "temperature": 0, "ignore_eos": True})
        next(line for line in gen.iter_lines() if line)
        t = busy_loop_request(w.url)
        time.sleep(0.05 + 0.02 * i)
        t0 = time.time()
        w.p.send_signal(signal.SIGINT)
        w.p.send_signal(signal.SIGTERM)
        rc = w.p.wait(timeout=10)
        assert time.time() - t0 < 5, "the second signal did not stop the worker at once"
        assert rc not in (0, -signal.SIGABRT), (i, rc, log_of(w)[-2000:])
        assert_no_crash(w)
        gen.close()
        t.join(timeout=10)

    # The first signal alone drains (the generation goes on); the second ends it at once.
    w = start_slow_worker(procs, tmp_path)
    gen = requests.post(w.url + "/generate", stream=True, timeout=60, json={
        "prompt": PROMPT, "max_tokens": 3000, "temperature": 0, "ignore_eos": True})
    lines = gen.iter_lines()
    next(line for line in lines if line)
    w.p.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert w.p.poll() is None, "SIGINT did not drain"
    assert requests.get(w.url + "/health", timeout=5).status_code == 503
    w.p.send_signal(signal.SIGTERM)
    assert w.p.wait(timeout=5) != 0
    assert_no_crash(w)

    for i in range(5):
        c = start_controller(procs)
        g = start_gateway(procs, c.url)
        for p in (g, c):
            p.p.send_signal(signal.SIGINT)
            p.p.send_signal(signal.SIGTERM)
            rc = p.p.wait(timeout=5)
            assert rc != -signal.SIGABRT, (i, rc)
            assert_no_crash(p)


# --- restarts: 503, not 404 ---------------------------------------------------------------------

def register(ctl, worker_url, model):
    r = requests.post(ctl.url + "/register_worker", timeout=5, json={
        "worker_name": worker_url, "check_heart_beat": True,
        "worker_status": {"model_names": [model], "speed": 1, "queue_length": 0}})
    assert r.status_code == 200, r.text


def complete(gw, model):
    return requests.post(gw.url + "/v1/completions", timeout=20,
                         json={"model": model, "prompt": PROMPT, "max_tokens": 2})


def assert_retry(r):
    assert r.status_code == 503, (r.status_code, r.text)
    assert r.headers.get("Retry-After")
    assert r.json()["error"]["param"] == "model"


def test_restarting_model_is_503_not_404(procs):
    need_stories()
    ctl_port = free_port()
    ctl_args = [binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(ctl_port)]
    ctl = procs.start(ctl_args, ctl_port, "controller").wait_http("/health")
    # Heartbeats far apart: the worker comes back only when the test says so.
    w = start_worker(procs, None, "--model-names", "stories", "--heartbeat-interval", "60", controller=ctl.url)
    wait_until(lambda: listed(ctl) == [w.url], 10, "the worker did not register")
    gw = start_gateway(procs, ctl.url)
    assert complete(gw, "stories").status_code == 200

    # The controller restarts and knows no worker yet.
    ctl.kill()
    ctl = procs.start(ctl_args, ctl_port, "controller").wait_http("/health")
    assert_retry(complete(gw, "stories"))
    r = complete(gw, "never-served")
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"
    register(ctl, w.url, "stories")
    assert complete(gw, "stories").status_code == 200

    # The worker stops (and leaves the controller): the model is restarting, not unknown.
    w.p.send_signal(signal.SIGTERM)
    assert w.p.wait(timeout=30) == 0
    assert listed(ctl) == []
    assert_retry(complete(gw, "stories"))
    # A gateway started now never saw the model served: the controller remembers it did.
    gw2 = start_gateway(procs, ctl.url)
    assert_retry(complete(gw2, "stories"))
    assert complete(gw2, "never-served").status_code == 404

    # The worker is back.
    start_worker(procs, None, "--model-names", "stories", controller=ctl.url)
    wait_until(lambda: complete(gw, "stories").status_code == 200, 20, "the model did not come back")


def test_controller_unreachable_is_503_with_retry_after(procs):
    gw = start_gateway(procs, f"http://127.0.0.1:{free_port()}")
    r = complete(gw, "stories")
    assert r.status_code == 503 and r.headers.get("Retry-After"), r.text


def test_unregister_worker_endpoint(procs):
    ctl = start_controller(procs, "--internal-token", "t0k")
    auth = {"Authorization": "Bearer t0k"}
    requests.post(ctl.url + "/register_worker", headers=auth, timeout=5, json={
        "worker_name": "http://127.0.0.1:9", "check_heart_beat": True,
        "worker_status": {"model_names": ["m"], "speed": 1, "queue_length": 0}}).raise_for_status()
    r = requests.post(ctl.url + "/unregister_worker", json={"worker_name": "http://127.0.0.1:9"}, timeout=5)
    assert r.status_code == 401, "unregistering needs the internal token, as registering does"
    r = requests.post(ctl.url + "/unregister_worker", headers=auth, timeout=5, json={"worker_name": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "worker_name"
    r = requests.post(ctl.url + "/unregister_worker", headers=auth, timeout=5,
                      json={"worker_name": "http://127.0.0.1:9"})
    assert r.status_code == 200 and r.json() == {"removed": True}
    assert listed(ctl, "t0k") == []
    a = requests.post(ctl.url + "/get_worker_address", headers=auth, json={"model": "m"}, timeout=5).json()
    assert a == {"address": "", "recently_served": True}
    a = requests.post(ctl.url + "/get_worker_address", headers=auth, json={"model": "x"}, timeout=5).json()
    assert a == {"address": ""}
    r = requests.post(ctl.url + "/unregister_worker", headers=auth, timeout=5,
                      json={"worker_name": "http://127.0.0.1:9"})
    assert r.status_code == 200 and r.json() == {"removed": False}


def test_unregister_finds_the_worker_under_any_spelling_of_its_address(procs):
    # Registration and heartbeats key the registry by the normalised address: so must
    # unregistering, or a worker that spells its address "HTTP://...:9/" stays dispatched to
    # until its heartbeats expire.
    ctl = start_controller(procs)
    requests.post(ctl.url + "/register_worker", timeout=5, json={
        "worker_name": "HTTP://127.0.0.1:9/", "check_heart_beat": True,
        "worker_status": {"model_names": ["m"], "speed": 1, "queue_length": 0}}).raise_for_status()
    assert listed(ctl) == ["http://127.0.0.1:9"]
    r = requests.post(ctl.url + "/unregister_worker", timeout=5, json={"worker_name": "HTTP://127.0.0.1:9/"})
    assert r.status_code == 200 and r.json() == {"removed": True}, r.text
    assert listed(ctl) == []
    r = requests.post(ctl.url + "/unregister_worker", timeout=5, json={"worker_name": "not a url"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "worker_name"
