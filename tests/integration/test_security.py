"""Secure by default, FastChat-compatible when asked (docs/PROTOCOL.md, "Authentication" and
"Worker addresses"), against the real binaries:

- without an internal token, controller and worker serve their internal endpoints to loopback
  callers only, and refuse to listen on a non-loopback address unless
  --allow-unauthenticated-workers;
- with --internal-token, every internal endpoint needs it, and the trio sends it everywhere;
- a worker address is exactly scheme://host:port: the controller refuses others at
  registration, and the gateway never sends to one it is given;
- every number a worker sends is checked by the gateway: nonsense is an error, never UB.

A non-loopback caller is made by binding the client socket to one of this machine's own
non-loopback addresses and connecting to 127.0.0.1: Linux accepts any local address as the
source of a connection over lo, and the server sees that address as the peer."""
import fcntl
import http.client
import json
import socket
import struct
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
import requests

from conftest import binary, free_port, need_stories, start_controller, start_worker
from test_gateway import MODEL, FakeWorker, sse_events, start_gateway

pytestmark = pytest.mark.timeout(120)

TOKEN = "s3cret-Token_1"
ALLOW = "--allow-unauthenticated-workers"


def local_non_loopback_ipv4():
    """One of this machine's IPv4 addresses outside 127.0.0.0/8, or None."""
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
            except OSError:
                continue
        ip = socket.inet_ntoa(raw[20:24])
        if not ip.startswith("127."):
            return ip
    return None


def need_non_loopback_ip():
    ip = local_non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    return ip


def call(url, method, path, body=None, token=None, source=None):
    """(status, headers, parsed JSON or raw text); source: the local address to call from."""
    host, port = url.rsplit("/", 1)[-1].rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30,
                                      source_address=(source, 0) if source else None)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=data, headers=headers)
        r = conn.getresponse()
        raw = r.read()
        try:
            parsed = json.loads(raw.split(b"\0")[0].split(b"\n")[0]) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
    finally:
        conn.close()


def expect_start_refused(args):
    """Runs a program that must refuse to start: exit 2, stderr naming both ways out."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = p.communicate(timeout=8)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        pytest.fail(f"{args[0]} started although it must refuse: {args}")
    err = err.decode(errors="replace")
    assert p.returncode == 2, (p.returncode, err)
    assert "--internal-token" in err and ALLOW in err, err
    return err


def register_body(name, models=("m",), status=True):
    body = {"worker_name": name, "check_heart_beat": False}
    body["worker_status"] = {"model_names": list(models), "speed": 1, "queue_length": 0} if status else None
    return body


def workers_of(ctl, token=None):
    status, _, body = call(ctl.url, "GET", "/workers", token=token)
    assert status == 200, body
    return [w["name"] for w in body["workers"]]


class Recorder:
    """An HTTP server that counts every request it gets and answers each with `status`."""

    def __init__(self, status=400):
        self.status = status
        self.paths = []
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length", "0"))
                if n:
                    self.rfile.read(n)
                rec.paths.append(self.path)
                data = b"" if rec.status in (204, 304) else json.dumps(
                    {"error": {"message": "recorded", "type": "invalid_request_error", "param": None,
                               "code": None}}).encode()
                self.send_response(rec.status)
                if rec.status == 302:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                if data:
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class FakeController:
    """Answers the gateway's /get_worker_address with whatever `address` is, and /list_models."""

    def __init__(self):
        self.address = ""
        ctl = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                if n:
                    self.rfile.read(n)
                obj = {"address": ctl.address} if self.path == "/get_worker_address" else {"models": [MODEL]}
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made = []

    def make(cls, *args):
        s = cls(*args)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def assert_sanitizer_clean(proc):
    assert proc.p.poll() is None, proc.output()
    log = proc.output()
    assert "Sanitizer" not in log and "runtime error" not in log, log


# --- listening without a token --------------------------------------------------------------------

def test_controller_refuses_non_loopback_host_without_token(procs):
    ctl_bin = binary("sluice-controller")
    for host in ("0.0.0.0", "::"):
        err = expect_start_refused([ctl_bin, "--host", host, "--port", "0"])
        assert host in err
    # By default it listens on loopback only, and needs nothing for that.
    port = free_port()
    default = procs.start([ctl_bin, "--port", str(port)], port, "controller").wait_http("/health")
    assert f"listening on http://127.0.0.1:{port} " in default.output()
    ip = local_non_loopback_ipv4()
    if ip is None:
        return
    with pytest.raises(OSError):
        socket.create_connection((ip, port), timeout=2).close()
    # Elsewhere: a token, or the explicit flag (with a loud warning).
    for extra in (["--internal-token", TOKEN], [ALLOW]):
        port = free_port()
        p = procs.start([ctl_bin, "--host", ip, "--port", str(port), *extra], port, "controller")
        deadline = time.time() + 10
        while "listening on" not in p.output():
            assert p.p.poll() is None and time.time() < deadline, p.output()
            time.sleep(0.05)
        assert ("WARNING" in p.output()) == (extra == [ALLOW]), p.output()


def test_worker_refuses_non_loopback_host_without_token():
    stories = need_stories()
    expect_start_refused([binary("sluice-worker"), "--model-path", str(stories / "hf"), "--device", "cpu",
                          "--no-register", "--host", "0.0.0.0", "--port", str(free_port())])


# --- loopback callers only, without a token ----------------------------------------------------

def test_registration_from_non_loopback_peer_refused(procs):
    ip = need_non_loopback_ip()
    ctl = start_controller(procs)
    body = register_body("http://127.0.0.1:1")
    status, _, err = call(ctl.url, "POST", "/register_worker", body, source=ip)
    assert status == 403, err
    assert err["error"]["type"] == "permission_error"
    assert "--internal-token" in err["error"]["message"] and ALLOW in err["error"]["message"]
    status, _, _ = call(ctl.url, "POST", "/receive_heart_beat",
                        {"worker_name": "http://127.0.0.1:1", "queue_length": 0}, source=ip)
    assert status == 403
    assert workers_of(ctl) == []
    # The same registration from loopback is served.
    assert call(ctl.url, "POST", "/register_worker", body)[0] == 200
    assert workers_of(ctl) == ["http://127.0.0.1:1"]
    # FastChat's behaviour, when asked for.
    open_ctl = start_controller(procs, ALLOW)
    assert call(open_ctl.url, "POST", "/register_worker", body, source=ip)[0] == 200
    assert workers_of(open_ctl) == ["http://127.0.0.1:1"]


def test_worker_serves_non_loopback_peer_only_with_token(procs):
    ip = need_non_loopback_ip()
    w = start_worker(procs)
    gen = {"prompt": "Once upon a time", "max_tokens": 2}
    status, _, err = call(w.url, "POST", "/generate", gen, source=ip)
    assert status == 403 and err["error"]["type"] == "permission_error", err
    assert ALLOW in err["error"]["message"]
    assert call(w.url, "POST", "/worker_get_status", {}, source=ip)[0] == 403
    assert call(w.url, "GET", "/health", source=ip)[0] == 200
    assert call(w.url, "POST", "/generate", gen)[0] == 200
    tw = start_worker(procs, None, "--internal-token", TOKEN)
    assert call(tw.url, "POST", "/generate", gen, token=TOKEN, source=ip)[0] == 200
    assert call(tw.url, "POST", "/generate", gen, source=ip)[0] == 401


# --- the internal token on every internal endpoint ------------------------------------------------

CONTROLLER_INTERNAL = [
    ("POST", "/register_worker", register_body("http://127.0.0.1:1")),
    ("POST", "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0}),
    ("POST", "/get_worker_address", {"model": "m"}),
    ("POST", "/list_models", {}),
    ("POST", "/list_language_models", {}),
    ("POST", "/list_multimodal_models", {}),
    ("POST", "/refresh_all_workers", {}),
    ("POST", "/worker_get_status", {}),
    ("GET", "/workers", None),
]


def test_controller_token_on_every_internal_endpoint(procs):
    ctl = start_controller(procs, "--internal-token", TOKEN)
    for method, path, body in CONTROLLER_INTERNAL:
        for token in (None, "wrong", TOKEN[:-1], TOKEN + "x"):
            status, headers, err = call(ctl.url, method, path, body, token=token)
            assert status == 401, (path, token, status, err)
            assert err["error"]["type"] == "authentication_error" and path in err["error"]["message"]
            assert headers.get("www-authenticate") == "Bearer"
        status, _, answer = call(ctl.url, method, path, body, token=TOKEN)
        assert status == 200, (path, answer)
    assert workers_of(ctl, TOKEN) == []  # the refresh dropped the worker that does not exist
    for path in ("/health", "/test_connection", "/metrics"):
        assert call(ctl.url, "GET", path)[0] == 200, path
    text = requests.get(ctl.url + "/metrics", timeout=5).text
    assert f"sluice_controller_unauthorized_total {4 * len(CONTROLLER_INTERNAL)}\n" in text


WORKER_INTERNAL = [
    ("POST", "/generate", {"prompt": "Once upon a time", "max_tokens": 2}),
    ("POST", "/worker_generate", {"prompt": "Once upon a time", "max_new_tokens": 2}),
    ("POST", "/worker_generate_stream", {"prompt": "Once upon a time", "max_new_tokens": 2}),
    ("POST", "/count_token", {"prompt": "The cat"}),
    ("POST", "/worker_get_conv_template", {}),
    ("POST", "/model_details", {}),
    ("POST", "/worker_get_status", {}),
    ("GET", "/worker_get_status", None),
    ("POST", "/tokenize", {"prompt": "The cat"}),
    ("POST", "/detokenize", {"tokens": [1, 2]}),
    ("POST", "/worker_get_embeddings", {"input": ["The cat"]}),
    ("POST", "/embed", {"input": "The cat"}),
]


def test_worker_token_on_every_internal_endpoint(procs):
    w = start_worker(procs, None, "--internal-token", TOKEN)
    for method, path, body in WORKER_INTERNAL:
        for token in (None, "wrong"):
            status, headers, err = call(w.url, method, path, body, token=token)
            assert status == 401, (path, token, status, err)
            assert err["error"]["type"] == "authentication_error"
            assert headers.get("www-authenticate") == "Bearer"
        status, _, answer = call(w.url, method, path, body, token=TOKEN)
        assert status == 200, (path, answer)
    for path in ("/health", "/metrics"):
        assert call(w.url, "GET", path)[0] == 200, path


def test_trio_with_token_end_to_end(procs):
    need_stories()
    ctl = start_controller(procs, "--internal-token", TOKEN)
    w = start_worker(procs, None, "--model-names", "stories", "--internal-token", TOKEN, "--heartbeat-interval",
                     "0.2", controller=ctl.url)
    deadline = time.time() + 20
    while workers_of(ctl, TOKEN) != [w.url]:
        assert time.time() < deadline, w.output()
        time.sleep(0.05)
    # The controller sends the token when it asks the worker itself: register with no status,
    # and refresh, both keep the worker (it would answer the controller 401 otherwise).
    assert call(ctl.url, "POST", "/register_worker", register_body(w.url, status=False), token=TOKEN)[0] == 200
    assert call(ctl.url, "POST", "/refresh_all_workers", {}, token=TOKEN)[0] == 200
    assert workers_of(ctl, TOKEN) == [w.url]

    gw = start_gateway(procs, ctl.url, "--internal-token", TOKEN)
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=60)
    assert [m.id for m in c.models.list().data] == ["stories"]
    r = c.chat.completions.create(model="stories", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert r.choices[0].message.content and r.usage.completion_tokens >= 1
    chunks = list(c.completions.create(model="stories", prompt="Once upon a time", max_tokens=4, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices)

    # A gateway without the token is refused by the controller: 503, and no generation.
    bare = start_gateway(procs, ctl.url)
    r = requests.post(bare.url + "/v1/completions", json={"model": "stories", "prompt": "x"}, timeout=10)
    assert r.status_code == 503, r.text
    assert "--internal-token" in bare.output()


# --- worker addresses -----------------------------------------------------------------------------

def bad_addresses(url):
    host_port = url.split("://", 1)[1]
    return [
        f"{url}/worker_get_status?",
        f"{url}/admin",
        f"{url}?x=1",
        f"{url}#frag",
        f"http://user:pw@{host_port}",
        f"http://evil@{host_port}",
        f"ftp://{host_port}",
        f"file:///etc/passwd",
        "http://127.0.0.1",
        "http://127.0.0.1:0",
        "http://127.0.0.1:65536",
        "http://0x7f000001:80",
        "http://::1:80",
        f"{url}//",
    ]


def test_controller_refuses_bad_worker_addresses(procs, servers):
    ctl = start_controller(procs)
    rec = servers(Recorder, 200)
    for name in bad_addresses(rec.url):
        for with_status in (True, False):
            status, _, err = call(ctl.url, "POST", "/register_worker", register_body(name, status=with_status))
            assert status == 400, (name, status, err)
            assert err["error"]["param"] == "worker_name" and "worker_name" in err["error"]["message"], err
        status, _, err = call(ctl.url, "POST", "/receive_heart_beat", {"worker_name": name, "queue_length": 0})
        assert status == 400 and err["error"]["param"] == "worker_name", (name, err)
    assert rec.paths == [], "the controller fetched a refused address"
    assert workers_of(ctl) == []
    # A trailing slash is normalised away, and a heartbeat may name either form.
    assert call(ctl.url, "POST", "/register_worker", register_body("HTTP://127.0.0.1:9/"))[0] == 200
    assert workers_of(ctl) == ["http://127.0.0.1:9"]
    status, _, answer = call(ctl.url, "POST", "/receive_heart_beat", {"worker_name": "http://127.0.0.1:9/",
                                                                       "queue_length": 0})
    assert status == 200 and answer == {"exist": True}
    assert call(ctl.url, "POST", "/get_worker_address", {"model": "m"})[2] == {"address": "http://127.0.0.1:9"}


def test_gateway_never_sends_to_a_bad_worker_address(procs, servers):
    rec = servers(Recorder, 400)
    fake_ctl = servers(FakeController)
    gw = start_gateway(procs, fake_ctl.url)
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2}
    for address in bad_addresses(rec.url):
        fake_ctl.address = address
        r = requests.post(gw.url + "/v1/completions", json=body, timeout=10)
        assert r.status_code == 502, (address, r.status_code, r.text)
        assert r.json()["error"]["type"] == "server_error"
    assert rec.paths == [], "the gateway sent to a refused address"
    assert "not a worker address" in gw.output()
    # The same recorder at a good address is reached (and its 400 passed on).
    fake_ctl.address = rec.url + "/"
    r = requests.post(gw.url + "/v1/completions", json=body, timeout=10)
    assert r.status_code == 400 and rec.paths == ["/generate"], (r.text, rec.paths)
    assert_sanitizer_clean(gw)


@pytest.mark.parametrize("worker_status", [204, 299, 302, 304])
def test_gateway_does_not_pass_on_non_error_statuses(procs, servers, worker_status):
    rec = servers(Recorder, worker_status)
    fake_ctl = servers(FakeController)
    fake_ctl.address = rec.url
    gw = start_gateway(procs, fake_ctl.url)
    r = requests.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
    assert r.status_code == 502, (r.status_code, r.text)
    assert r.json()["error"]["type"] == "server_error"
    assert_sanitizer_clean(gw)


# --- numbers a worker sends -----------------------------------------------------------------------

def set_usage(**kw):
    def craft(frame):
        frame["usage"].update(kw)
        return frame
    return craft


def set_field(key, value):
    def craft(frame):
        frame[key] = value
        return frame
    return craft


CRAFTED = [
    ("int_max_each", set_usage(prompt_tokens=2**31 - 1, completion_tokens=2**31 - 1), "usage"),
    ("int64_max", set_usage(prompt_tokens=2**63 - 1), "usage.prompt_tokens"),
    ("int64_max_completion", set_usage(completion_tokens=2**63 - 1), "usage.completion_tokens"),
    ("negative", set_usage(prompt_tokens=-5), "usage.prompt_tokens"),
    ("int64_min", set_usage(completion_tokens=-2**63), "usage.completion_tokens"),
    ("float", set_usage(completion_tokens=2.5), "usage.completion_tokens"),
    ("float_integral", set_usage(prompt_tokens=5.0), "usage.prompt_tokens"),
    ("huge_float", set_usage(prompt_tokens=1e300), "usage.prompt_tokens"),
    ("string", set_usage(prompt_tokens="5"), "usage.prompt_tokens"),
    ("usage_not_object", set_field("usage", [1, 2]), "usage"),
    ("negative_token_id", set_field("token_ids", [-1]), "token_ids[0]"),
    ("huge_token_id", set_field("token_ids", [2**40]), "token_ids[0]"),
    ("positive_logprob", set_field("logprobs", [{"token_id": 1, "token": "x", "logprob": 5}]), "logprob"),
    ("bad_byte", set_field("logprobs", [{"token_id": 1, "token": "x", "logprob": -1, "bytes": [300]}]), "bytes"),
    ("bad_top", set_field("logprobs", [{"token_id": 1, "token": "x", "logprob": -1,
                                        "top_logprobs": [{"token_id": -3, "token": "y", "logprob": -2}]}]),
     "top_logprobs[0].token_id"),
]


def from_frame(n, craft):
    """craft applied to the n-th frame of each answer on (FakeWorker counts completion_tokens
    from 1), so that a stream has begun before the bad frame comes."""
    def apply(frame):
        return craft(frame) if frame["usage"]["completion_tokens"] >= n else frame
    return apply


@pytest.fixture
def crafted_stack(procs):
    ctl = start_controller(procs)
    w = FakeWorker()
    try:
        w.register(ctl.url)
        yield start_gateway(procs, ctl.url), w
    finally:
        w.close()


@pytest.mark.parametrize("name,craft,field", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_worker_numbers_are_errors(crafted_stack, name, craft, field):
    gw, w = crafted_stack
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for first in (1, 3):
        w.craft = from_frame(first, craft)
        r = requests.post(gw.url + "/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 502, (first, r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] == "server_error" and field in err["message"], err
        r = requests.post(gw.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=10, stream=True)
        if first == 1:
            # Nothing was streamed yet: the answer is the error.
            assert r.status_code == 502 and field in r.json()["error"]["message"], r.text
        else:
            # Two frames went out as chunks; the error follows in-stream, then [DONE].
            assert r.status_code == 200
            events = sse_events(r)
            assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
            errors = [json.loads(e)["error"] for e in events if e.startswith("{\"error\"")]
            assert len(errors) == 1 and field in errors[0]["message"], events
            assert events[-1] == "[DONE]" and events[-2].startswith("{\"error\"")
    assert_sanitizer_clean(gw)


def test_usage_summed_over_choices_is_bounded(crafted_stack):
    gw, w = crafted_stack
    # Each frame alone is plausible; two choices together count more than an int holds.
    w.craft = set_usage(prompt_tokens=5, completion_tokens=1_500_000_000)
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "n": 2}
    r = requests.post(gw.url + "/v1/completions", json=body, timeout=10)
    assert r.status_code == 502, r.text
    assert r.json()["error"]["type"] == "server_error"
    r = requests.post(gw.url + "/v1/completions", timeout=10, stream=True,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}})
    events = sse_events(r)
    assert any(e.startswith("{\"error\"") for e in events) and events[-1] == "[DONE]", events
    assert not any("\"total_tokens\"" in e for e in events), events
    # Plausible numbers still pass.
    w.craft = None
    r = requests.post(gw.url + "/v1/completions", json=body, timeout=10)
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 5
    assert_sanitizer_clean(gw)
