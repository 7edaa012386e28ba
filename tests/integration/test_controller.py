"""sluice-controller over HTTP: registration, heartbeats, dispatch, expiry, refresh against a
live and a dead worker, the internal token, metrics, and every kind of bad input."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from conftest import free_port, start_controller

pytestmark = pytest.mark.timeout(60)

EXPIRATION = 2.0


def post(ctl, path, body=None, token=None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(ctl.url + path, json=body, headers=headers, timeout=10, **kw)


def register(ctl, name, models, speed=1, queue_length=0, check_heart_beat=True, token=None):
    r = post(ctl, "/register_worker", {
        "worker_name": name, "check_heart_beat": check_heart_beat,
        "worker_status": {"model_names": models, "speed": speed, "queue_length": queue_length},
    }, token=token)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    return r


def address(ctl, model, token=None):
    r = post(ctl, "/get_worker_address", {"model": model}, token=token)
    assert r.status_code == 200, r.text
    return r.json()["address"]


def workers(ctl):
    r = requests.get(ctl.url + "/workers", timeout=5)
    assert r.status_code == 200
    return {w["name"]: w for w in r.json()["workers"]}


def stop_clean(ctl):
    """SIGTERM, then a clean exit with nothing from the sanitizers (leaks included) in the log."""
    import signal
    if ctl.p.poll() is None:
        ctl.p.send_signal(signal.SIGTERM)
    assert ctl.p.wait(timeout=10) == 0
    log = ctl.log_path.read_text(errors="replace")
    assert "Sanitizer" not in log and "runtime error" not in log, log[-4000:]


@pytest.fixture
def controller(procs):
    """start(*flags, env=None) -> a controller; each is stopped with SIGTERM and checked."""
    started = []

    def start(*extra, env=None):
        c = start_controller(procs, *extra, env=env)
        started.append(c)
        return c

    yield start
    for c in started:
        stop_clean(c)


@pytest.fixture
def ctl(controller):
    return controller("--heartbeat-expiration", str(EXPIRATION))


class FakeStatusWorker:
    """Answers POST /worker_get_status the way a FastChat worker does."""

    def __init__(self, status):
        self.status = status
        self.calls = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                if n:
                    self.rfile.read(n)
                fake.calls += 1
                code, data = (200, json.dumps(fake.status).encode()) if self.path == "/worker_get_status" \
                    else (404, b"{}")
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def fake_worker():
    w = FakeStatusWorker({"model_names": ["fake-model"], "speed": 2, "queue_length": 1})
    yield w
    w.close()


def dead_address():
    """A URL where nothing listens: connecting is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def test_register_list_and_dispatch(ctl):
    register(ctl, "http://127.0.0.1:1", ["alpha", "beta"])
    register(ctl, "http://127.0.0.1:2", ["gamma"], speed=3, queue_length=2)
    assert post(ctl, "/list_models").json() == {"models": ["alpha", "beta", "gamma"]}
    assert address(ctl, "alpha") == "http://127.0.0.1:1"
    assert address(ctl, "beta") == "http://127.0.0.1:1"
    assert address(ctl, "gamma") == "http://127.0.0.1:2"
    assert address(ctl, "delta") == ""
    assert requests.get(ctl.url + "/health", timeout=5).json() == {"status": "ok", "workers": 2}
    ws = workers(ctl)
    assert set(ws) == {"http://127.0.0.1:1", "http://127.0.0.1:2"}
    w2 = ws["http://127.0.0.1:2"]
    assert w2["models"] == ["gamma"]
    assert w2["speed"] == 3
    assert w2["queue_length"] == 3  # 2 reported + 1 dispatch counted
    assert 0 <= w2["last_heartbeat_age_s"] < EXPIRATION
    assert w2["check_heart_beat"] is True
    st = post(ctl, "/worker_get_status").json()
    assert st["model_names"] == ["alpha", "beta", "gamma"]
    assert st["speed"] == 4
    assert st["queue_length"] == 5
    r = requests.get(ctl.url + "/test_connection", timeout=5)
    assert r.status_code == 200 and r.json() == "success"


def test_multimodal_lists(ctl):
    register(ctl, "http://127.0.0.1:1", ["text-model"])
    r = post(ctl, "/register_worker", {"worker_name": "http://127.0.0.1:2", "check_heart_beat": True,
                                       "multimodal": True,
                                       "worker_status": {"model_names": ["vision-model"], "speed": 1}})
    assert r.status_code == 200
    assert post(ctl, "/list_models").json() == {"models": ["text-model", "vision-model"]}
    assert post(ctl, "/list_language_models").json() == {"models": ["text-model"]}
    assert post(ctl, "/list_multimodal_models").json() == {"models": ["vision-model"]}
    assert workers(ctl)["http://127.0.0.1:2"]["multimodal"] is True


def test_reregister_replaces_models(ctl):
    register(ctl, "http://127.0.0.1:1", ["alpha"])
    register(ctl, "http://127.0.0.1:1", ["beta"])
    assert post(ctl, "/list_models").json() == {"models": ["beta"]}
    assert address(ctl, "alpha") == ""
    assert len(workers(ctl)) == 1


def test_heartbeat(ctl):
    r = post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:9", "queue_length": 0})
    assert r.status_code == 200 and r.json() == {"exist": False}
    register(ctl, "http://127.0.0.1:1", ["alpha"])
    r = post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 7})
    assert r.json() == {"exist": True}
    assert workers(ctl)["http://127.0.0.1:1"]["queue_length"] == 7


def test_shortest_queue_spreads_and_counts(ctl):
    register(ctl, "http://127.0.0.1:1", ["m"])
    register(ctl, "http://127.0.0.1:2", ["m"])
    got = [address(ctl, "m") for _ in range(10)]
    assert got.count("http://127.0.0.1:1") == 5 and got.count("http://127.0.0.1:2") == 5
    # The next heartbeat tells the truth: worker 1 is busy, worker 2 idle.
    post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 100})
    post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:2", "queue_length": 0})
    assert {address(ctl, "m") for _ in range(20)} == {"http://127.0.0.1:2"}


def test_shortest_queue_ties_are_random(ctl):
    """With four idle workers, which goes first must vary (FastChat's argmin always took the first)."""
    names = [f"http://127.0.0.1:{i}" for i in range(1, 5)]
    firsts = set()
    for _ in range(30):
        for n in names:
            register(ctl, n, ["m"])  # resets every queue to 0
        firsts.add(address(ctl, "m"))
    assert len(firsts) >= 3, firsts


def test_lottery_follows_speed(controller):
    ctl = controller("--dispatch-method", "lottery")
    register(ctl, "http://127.0.0.1:1", ["m"], speed=1)
    register(ctl, "http://127.0.0.1:2", ["m"], speed=3)
    n = 600
    fast = sum(address(ctl, "m") == "http://127.0.0.1:2" for _ in range(n))
    sd = (0.75 * 0.25 / n) ** 0.5
    assert abs(fast / n - 0.75) < 5 * sd, fast
    # Lottery does not count dispatches into the queue.
    assert workers(ctl)["http://127.0.0.1:2"]["queue_length"] == 0


def test_expiry(ctl):
    register(ctl, "http://127.0.0.1:1", ["alpha"])                           # goes silent
    register(ctl, "http://127.0.0.1:2", ["beta"], check_heart_beat=False)    # never expires
    register(ctl, "http://127.0.0.1:3", ["alpha"])                           # keeps beating
    start = time.monotonic()
    silent_gone = None
    while time.monotonic() - start < EXPIRATION + 2:
        # The beating worker is busy, so the silent one would win every dispatch while live.
        post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:3", "queue_length": 1000})
        if silent_gone is None and address(ctl, "alpha") != "http://127.0.0.1:1":
            silent_gone = time.monotonic() - start
        time.sleep(0.1)
    assert silent_gone is not None, "the silent worker was still dispatched to"
    assert EXPIRATION - 0.3 <= silent_gone <= EXPIRATION + 0.5, silent_gone
    assert address(ctl, "alpha") == "http://127.0.0.1:3"
    assert address(ctl, "beta") == "http://127.0.0.1:2"
    ws = workers(ctl)
    assert set(ws) == {"http://127.0.0.1:2", "http://127.0.0.1:3"}
    r = post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0})
    assert r.json() == {"exist": False}
    assert post(ctl, "/list_models").json() == {"models": ["alpha", "beta"]}
    metrics = requests.get(ctl.url + "/metrics", timeout=5).text
    assert "sluice_controller_workers_expired_total 1\n" in metrics
    assert "sluice_controller_workers 2\n" in metrics


def test_refresh_all_workers(ctl, fake_worker):
    register(ctl, fake_worker.url, ["stale-model"], speed=1)
    dead = dead_address()
    register(ctl, dead, ["dead-model"])
    t0 = time.monotonic()
    r = post(ctl, "/refresh_all_workers")
    assert r.status_code == 200 and r.json() == {}
    assert time.monotonic() - t0 < 5
    ws = workers(ctl)
    assert set(ws) == {fake_worker.url}
    assert ws[fake_worker.url]["models"] == ["fake-model"]
    assert ws[fake_worker.url]["speed"] == 2
    assert ws[fake_worker.url]["queue_length"] == 1
    assert post(ctl, "/list_models").json() == {"models": ["fake-model"]}
    assert address(ctl, "dead-model") == ""
    assert "sluice_controller_workers_refresh_removed_total 1\n" in requests.get(ctl.url + "/metrics", timeout=5).text
    # With no workers at all the refresh answers at once.
    post(ctl, "/refresh_all_workers")
    r = post(ctl, "/refresh_all_workers")
    assert r.status_code == 200


def test_register_without_status_asks_the_worker(ctl, fake_worker):
    r = post(ctl, "/register_worker", {"worker_name": fake_worker.url, "check_heart_beat": True,
                                       "worker_status": None})
    assert r.status_code == 200, r.text
    assert fake_worker.calls == 1
    assert address(ctl, "fake-model") == fake_worker.url
    dead = dead_address()
    r = post(ctl, "/register_worker", {"worker_name": dead, "check_heart_beat": True})
    assert r.status_code == 502
    assert r.json()["error"]["param"] == "worker_name"
    assert dead not in workers(ctl)


def test_internal_token(controller):
    ctl = controller("--internal-token", "s3cret")
    body = {"worker_name": "http://127.0.0.1:1", "check_heart_beat": True,
            "worker_status": {"model_names": ["m"], "speed": 1, "queue_length": 0}}
    for token in (None, "wrong", "s3cre", "s3cret-and-more"):
        r = post(ctl, "/register_worker", body, token=token)
        assert r.status_code == 401, token
        assert r.json()["error"]["type"] == "authentication_error"
        r = post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0}, token=token)
        assert r.status_code == 401
    assert address(ctl, "m", token="s3cret") == ""
    assert post(ctl, "/register_worker", body, token="s3cret").status_code == 200
    r = post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0}, token="s3cret")
    assert r.status_code == 200 and r.json() == {"exist": True}
    # Reading endpoints need it too (test_security.py goes through every one).
    assert post(ctl, "/get_worker_address", {"model": "m"}).status_code == 401
    assert address(ctl, "m", token="s3cret") == "http://127.0.0.1:1"
    assert "sluice_controller_unauthorized_total 9\n" in requests.get(ctl.url + "/metrics", timeout=5).text


def test_internal_token_from_env(controller):
    ctl = controller(env={"SLUICE_INTERNAL_TOKEN": "envtok"})
    body = {"worker_name": "http://127.0.0.1:1", "worker_status": {"model_names": ["m"]}}
    assert post(ctl, "/register_worker", body).status_code == 401
    assert post(ctl, "/register_worker", body, token="envtok").status_code == 200


W = "http://127.0.0.1:1"
BAD_BODIES = [
    # (path, raw body, param named in the error or None)
    ("/register_worker", b"{not json", None),
    ("/register_worker", b"", None),
    ("/register_worker", b"[1,2]", None),
    ("/register_worker", b"{}", "worker_name"),
    ("/register_worker", json.dumps({"worker_name": 5}).encode(), "worker_name"),
    ("/register_worker", json.dumps({"worker_name": "not-a-url"}).encode(), "worker_name"),
    ("/register_worker", json.dumps({"worker_name": W, "check_heart_beat": "yes"}).encode(), "check_heart_beat"),
    ("/register_worker", json.dumps({"worker_name": W, "worker_status": "ok"}).encode(), "worker_status"),
    ("/register_worker", json.dumps({"worker_name": W, "worker_status": {}}).encode(), "worker_status.model_names"),
    ("/register_worker", json.dumps({"worker_name": W, "worker_status": {"model_names": [1]}}).encode(),
     "worker_status.model_names"),
    ("/register_worker", json.dumps({"worker_name": W, "worker_status": {"model_names": ["m"], "speed": "x"}}).encode(),
     "worker_status.speed"),
    ("/register_worker", json.dumps({"worker_name": W, "worker_status": {"model_names": ["m"], "speed": -1}}).encode(),
     "worker_status.speed"),
    ("/register_worker",
     json.dumps({"worker_name": W, "worker_status": {"model_names": ["m"], "queue_length": "3"}}).encode(),
     "worker_status.queue_length"),
    ("/receive_heart_beat", b"{\"worker_name\": ", None),
    ("/receive_heart_beat", json.dumps({"queue_length": 1}).encode(), "worker_name"),
    ("/receive_heart_beat", json.dumps({"worker_name": W}).encode(), "queue_length"),
    ("/receive_heart_beat", json.dumps({"worker_name": W, "queue_length": -1}).encode(), "queue_length"),
    ("/receive_heart_beat", json.dumps({"worker_name": W, "queue_length": 1.5}).encode(), "queue_length"),
    ("/get_worker_address", b"", None),
    ("/get_worker_address", b"\"llama\"", None),
    ("/get_worker_address", b"{}", "model"),
    ("/get_worker_address", json.dumps({"model": None}).encode(), "model"),
    ("/get_worker_address", json.dumps({"model": ["a"]}).encode(), "model"),
    ("/get_worker_address", b"{\"model\": \"a\", \"model\": \"b\"}", None),
]


def test_bad_input(ctl):
    register(ctl, W, ["m"])
    for path, raw, param in BAD_BODIES:
        r = requests.post(ctl.url + path, data=raw, headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 400, (path, raw, r.status_code, r.text)
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error"
        assert err["param"] == param, (path, raw, err)
        assert err["message"]
        if param:
            assert param.split(".")[-1] in err["message"], err
    # Nothing above changed the registry.
    assert set(workers(ctl)) == {W}
    assert address(ctl, "m") == W

    r = requests.get(ctl.url + "/nope", timeout=5)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert requests.post(ctl.url + "/v1/chat/completions", json={}, timeout=5).status_code == 404
    for path in ("/register_worker", "/receive_heart_beat", "/list_models", "/get_worker_address",
                 "/refresh_all_workers", "/worker_get_status"):
        r = requests.get(ctl.url + path, timeout=5)
        assert r.status_code == 405, path
        assert r.headers["Allow"] == "POST"
        assert "error" in r.json()
    for path in ("/health", "/workers", "/metrics", "/test_connection"):
        r = requests.post(ctl.url + path, json={}, timeout=5)
        assert r.status_code == 405, path
        assert r.headers["Allow"] == "GET"
    r = requests.delete(ctl.url + "/workers", timeout=5)
    assert r.status_code == 405
    assert requests.get(ctl.url + "/health", timeout=5).status_code == 200


def test_metrics(ctl):
    register(ctl, "http://127.0.0.1:1", ["alpha"])
    register(ctl, "http://127.0.0.1:2", ["beta"])
    for _ in range(3):
        address(ctl, "alpha")
    address(ctl, "nobody-serves-this")
    post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:1", "queue_length": 0})
    post(ctl, "/receive_heart_beat", {"worker_name": "http://127.0.0.1:99", "queue_length": 0})
    r = requests.get(ctl.url + "/metrics", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    for line in (
        "sluice_controller_workers 2",
        "sluice_controller_models 2",
        'sluice_controller_dispatch_total{model="alpha",result="ok"} 3',
        'sluice_controller_dispatch_total{model="alpha",result="no_worker"} 0',
        'sluice_controller_dispatch_total{model="beta",result="ok"} 0',
        'sluice_controller_dispatch_total{model="_unknown",result="no_worker"} 1',
        "sluice_controller_registrations_total 2",
        'sluice_controller_heartbeats_total{known="true"} 1',
        'sluice_controller_heartbeats_total{known="false"} 1',
    ):
        assert line + "\n" in text, (line, text)
    assert "# TYPE sluice_controller_dispatch_total counter" in text
    # A model whose workers went away counts its misses under its own name.
    register(ctl, "http://127.0.0.1:1", ["gamma"])
    address(ctl, "alpha")
    text = requests.get(ctl.url + "/metrics", timeout=5).text
    assert 'sluice_controller_dispatch_total{model="alpha",result="no_worker"} 1\n' in text


def test_bad_flags_exit_with_usage():
    import subprocess
    from conftest import binary
    for args in (["--dispatch-method", "round_robin"], ["--heartbeat-expiration", "-1"], ["--log-level", "loud"]):
        p = subprocess.run([binary("sluice-controller"), "--port", "0", *args], capture_output=True, timeout=10)
        assert p.returncode == 2, (args, p.stderr)
        assert p.stderr


class HangingWorker:
    """Accepts connections (through the listen backlog) and never answers."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self):
        self.sock.close()


def test_refresh_bounded_by_timeout_and_client_leaving(controller, fake_worker):
    ctl = controller("--worker-status-timeout-ms", "800")
    hang = HangingWorker()
    try:
        register(ctl, hang.url, ["hang-model"])
        register(ctl, fake_worker.url, ["fake-model"])
        # The client gives up before the hanging worker's call times out.
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.post(ctl.url + "/refresh_all_workers", timeout=0.3)
        deadline = time.monotonic() + 5
        while hang.url in workers(ctl) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(workers(ctl)) == {fake_worker.url}
        # A refresh that waits on a hanging worker answers once its call times out.
        register(ctl, hang.url, ["hang-model"])
        t0 = time.monotonic()
        r = post(ctl, "/refresh_all_workers")
        took = time.monotonic() - t0
        assert r.status_code == 200
        assert 0.6 < took < 2.5, took
        assert set(workers(ctl)) == {fake_worker.url}
    finally:
        hang.close()


def test_sigterm_during_refresh_exits_cleanly(procs):
    ctl = start_controller(procs, "--worker-status-timeout-ms", "5000")
    hang = HangingWorker()
    try:
        register(ctl, hang.url, ["hang-model"])
        result = {}

        def refresh():
            try:
                result["status"] = requests.post(ctl.url + "/refresh_all_workers", timeout=10).status_code
            except requests.RequestException as e:
                result["error"] = e

        t = threading.Thread(target=refresh)
        t.start()
        time.sleep(0.3)
        stop_clean(ctl)
        t.join(timeout=10)
        assert result.get("status") == 503 or "error" in result, result
    finally:
        hang.close()


def test_hostile_input_never_crashes(ctl):
    import random
    import socket
    cases = [
        ("/register_worker", json.dumps({"worker_name": "http://" + "a" * 3000}).encode(), "worker_name"),
        ("/register_worker", json.dumps({"worker_name": W, "worker_status": {
            "model_names": [f"m{i}" for i in range(300)]}}).encode(), "worker_status.model_names"),
        ("/register_worker", json.dumps({"worker_name": W, "worker_status": {
            "model_names": ["m"], "speed": 1e300}}).encode(), "worker_status.speed"),
        ("/get_worker_address", b'{"model": "\xff\xfe"}', None),          # invalid UTF-8
        ("/get_worker_address", b'{"model": "a\\u0000b"}', "model"),      # NUL inside a string
        ("/get_worker_address", b"[" * 5000 + b"]" * 5000, None),         # deep nesting
    ]
    for path, raw, param in cases:
        r = requests.post(ctl.url + path, data=raw, headers={"Content-Type": "application/json"}, timeout=5)
        assert r.status_code == 400, (path, raw[:60], r.text)
        assert r.json()["error"]["param"] == param
    r = requests.post(ctl.url + "/get_worker_address", data=b"{" + b" " * (2 << 20) + b"}", timeout=10)
    assert r.status_code == 413
    rng = random.Random(7)
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", ctl.port), timeout=2) as s:
            junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
            try:
                s.sendall(rng.choice([b"", b"POST /get_worker_address HTTP/1.1\r\n"]) + junk)
                s.shutdown(socket.SHUT_WR)
                s.recv(4096)
            except OSError:
                pass
    assert requests.get(ctl.url + "/health", timeout=5).json()["status"] == "ok"
