"""Every program that serves HTTP (controller, worker, gateway) under hostile input: slow-loris
connections (empty lines, headers one byte at a time), the idle timeout, the per-address cap,
and error bodies for bytes that are not what a client should send (raw 0x80-0xFF in a URL,
invalid UTF-8 in a body or a header, NUL characters, long non-ASCII names): always an
OpenAI-shaped JSON error with an honest status, never a text/plain fallback, never a library's
option name.

Raw sockets, so that every byte on the wire is the test's; timeouts of about a second, so each
test takes a few seconds."""
import json
import socket
import threading
import time

import pytest

from conftest import binary, free_port, need_stories, start_controller

pytestmark = pytest.mark.timeout(60)

FAST = ("--header-timeout-ms", "1000", "--idle-timeout-ms", "1000")
PROGRAMS = ["controller", "worker", "gateway"]
TOLERANCE = 0.5  # seconds either side of a timeout's setting


def start(procs, program, *extra):
    """One program with the given server flags; the gateway gets a controller of its own.
    Waited for with a request on a connection that is closed at once, so that no idle
    connection is left behind to count against the per-address cap."""
    port = free_port()
    if program == "controller":
        args = [binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(port)]
    elif program == "worker":
        args = [binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--device", "cpu",
                "--host", "127.0.0.1", "--port", str(port), "--threads", "1", "--no-register"]
    else:
        ctl = start_controller(procs)
        args = [binary("sluice-gateway"), "--host", "127.0.0.1", "--port", str(port),
                "--controller-address", ctl.url, "--controller-timeout-ms", "500"]
    p = procs.start(args + list(extra), port, program)
    deadline = time.monotonic() + 60
    while True:
        if p.p.poll() is not None:
            raise RuntimeError(f"{program} exited with {p.p.returncode}:\n{p.output()}")
        try:
            resp = exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            if resp and resp[0] == 200:
                return p
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{program} did not start:\n{p.output()}"
        time.sleep(0.05)


def connect(port, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_response(s):
    """(status, headers, body) of one response with Content-Length; None when the connection
    closes first."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        try:
            d = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            return None
        if not d:
            return None
        buf += d
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower().decode(): v.strip().decode("latin-1")
               for k, v in (line.split(b":", 1) for line in lines[1:])}
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        d = s.recv(65536)
        if not d:
            break
        rest += d
    return status, headers, rest[:n]


def exchange(port, raw):
    s = connect(port)
    try:
        s.sendall(raw)
        return read_response(s)
    finally:
        s.close()


def closed(s):
    """True once the server has closed s (EOF or reset); never blocks."""
    timeout = s.gettimeout()
    s.setblocking(False)  # a socket with a timeout would wait for data despite MSG_DONTWAIT
    try:
        while True:
            if not s.recv(65536):
                return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.settimeout(timeout)


def openai_error(resp, status):
    """Checks an OpenAI-shaped JSON error with this status; returns its "error" object."""
    assert resp is not None, "no response"
    got, headers, body = resp
    assert got == status, (got, body[:300])
    assert headers.get("content-type") == "application/json", headers
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    for detail in ("JSON_", "callback", "HPE_", "llhttp", "jansson", "curl"):
        assert detail not in err["message"], err["message"]
    return err


def post_raw(port, path, body, headers=b""):
    return exchange(port, b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n%s"
                          b"Content-Length: %d\r\n\r\n%s" % (path, headers, len(body), body))


def json_endpoint(program):
    return {"controller": b"/get_worker_address", "worker": b"/generate",
            "gateway": b"/v1/chat/completions"}[program]


# --- slow clients and timeouts -----------------------------------------------------------------

@pytest.mark.parametrize("program", PROGRAMS)
def test_empty_lines_closed_at_header_timeout(procs, program):
    """Connections that send only CRLFs are closed when their first request's headers are due,
    while a normal client is answered meanwhile."""
    p = start(procs, program, *FAST)
    t0 = time.monotonic()
    socks = [connect(p.port) for _ in range(40)]
    closed_at = {}
    answered = None
    while len(closed_at) < len(socks) and time.monotonic() - t0 < 4:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                if closed(s):
                    raise ConnectionResetError
                s.send(b"\r\n")
            except OSError:
                closed_at[i] = time.monotonic() - t0
        if answered is None and time.monotonic() - t0 > 0.3:
            answered = exchange(p.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
    for s in socks:
        s.close()
    assert answered is not None and answered[0] == 200, answered
    assert len(closed_at) == len(socks), f"{len(socks) - len(closed_at)} still open after 4 s"
    assert all(1.0 - TOLERANCE <= t <= 1.0 + TOLERANCE for t in closed_at.values()), sorted(closed_at.values())


@pytest.mark.parametrize("program", PROGRAMS)
def test_header_trickle_cut_off_at_header_timeout(procs, program):
    """Headers trickling in one byte at a time get 408 when the header timeout, counted from the
    connection, runs out."""
    p = start(procs, program, *FAST)
    s = connect(p.port)
    t0 = time.monotonic()
    stop = threading.Event()

    def trickle():
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 100:
            if stop.is_set():
                return
            try:
                s.send(bytes([b]))
            except OSError:
                return
            time.sleep(0.1)

    t = threading.Thread(target=trickle)
    t.start()
    resp = read_response(s)
    took = time.monotonic() - t0
    stop.set()
    t.join()
    openai_error(resp, 408)
    assert 1.0 - TOLERANCE <= took <= 1.0 + TOLERANCE, took
    s.close()


@pytest.mark.parametrize("program", PROGRAMS)
def test_idle_timeout_on_time(procs, program):
    p = start(procs, program, *FAST)
    s = connect(p.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(s)[0] == 200
    t0 = time.monotonic()
    while not closed(s) and time.monotonic() - t0 < 4:
        time.sleep(0.02)
    took = time.monotonic() - t0
    s.close()
    assert 1.0 - TOLERANCE <= took <= 1.0 + TOLERANCE, took


@pytest.mark.parametrize("program", PROGRAMS)
def test_per_address_cap_refuses_with_json(procs, program):
    """With a cap of 3, the 4th connection waiting for a request gets 429 in JSON and is closed;
    one whose request is in flight does not count; a slot frees when a client leaves."""
    p = start(procs, program, "--max-connections-per-loopback", "3")
    idle = [connect(p.port) for _ in range(3)]
    time.sleep(0.2)
    assert not any(closed(s) for s in idle), "a connection under the cap was closed"
    extra = connect(p.port)
    err = openai_error(read_response(extra), 429)
    assert err["type"] == "rate_limit_exceeded" and "at most 3" in err["message"], err
    assert read_response(extra) is None, "the refused connection stays open"
    extra.close()
    # Requests in flight do not count: the idle ones may each send one, and are answered.
    for s in idle:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in idle:
        assert read_response(s)[0] == 200
    idle.pop().close()
    deadline = time.monotonic() + 3
    while True:
        resp = exchange(p.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        if resp and resp[0] == 200:
            break
        assert time.monotonic() < deadline, resp
        time.sleep(0.05)
    for s in idle:
        s.close()


# --- error bodies --------------------------------------------------------------------------------

@pytest.mark.parametrize("program", PROGRAMS)
def test_error_bodies_are_json_for_any_bytes(procs, program):
    p = start(procs, program)
    # Raw bytes 0x80-0xFF in the URL, and a long path of them.
    err = openai_error(exchange(p.port, b"GET /\x80\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n"), 404)
    assert "\ufffd" in err["message"]
    err = openai_error(exchange(p.port, b"GET /" + b"\xc3\xa9" * 400 + b" HTTP/1.1\r\nHost: x\r\n\r\n"), 404)
    assert len(err["message"]) < 400 and "\ufffd" not in err["message"], err["message"]
    # A body that is not UTF-8, and one that is not JSON.
    err = openai_error(post_raw(p.port, json_endpoint(program), b'{"model": "\xff\xfe"}'), 400)
    assert "UTF-8" in err["message"], err
    err = openai_error(post_raw(p.port, json_endpoint(program), b'{"model": tru}'), 400)
    assert "line 1" in err["message"] and "tru" in err["message"], err
    # A header value that is not UTF-8, and a malformed request.
    resp = exchange(p.port, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nX-Junk: \xff\xc3\r\n\r\n")
    openai_error(resp, 404)
    err = openai_error(exchange(p.port, b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), 400)
    assert "header" in err["message"], err
    # Raw NUL bytes: in a header, in the URL, in a JSON string and after the JSON value.
    openai_error(exchange(p.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n"), 400)
    openai_error(exchange(p.port, b"GET /he\x00alth HTTP/1.1\r\nHost: x\r\n\r\n"), 400)
    err = openai_error(post_raw(p.port, json_endpoint(program), b'{"model": "a\x00b"}'), 400)
    assert "control character" in err["message"], err
    err = openai_error(post_raw(p.port, json_endpoint(program), b'{"model": "m"}\x00'), 400)
    assert "after the JSON value" in err["message"], err


NUL_BODIES = {
    "controller": (b"/get_worker_address", {"model": "m\u0000x"}, "model"),
    "worker": (b"/generate", {"prompt": "a\u0000b", "max_tokens": 1}, "prompt"),
    "gateway": (b"/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "a\u0000b"}]},
                "messages[0].content"),
}


@pytest.mark.parametrize("program", PROGRAMS)
def test_nul_characters_refused_by_field(procs, program):
    """\\u0000 is valid JSON but every program reads strings as C strings: a 400 names the field
    rather than a prompt being cut short (or a model name "m\\u0000x" read as "m")."""
    p = start(procs, program)
    path, body, param = NUL_BODIES[program]
    err = openai_error(post_raw(p.port, path, json.dumps(body).encode()), 400)
    assert err["param"] == param and "NUL" in err["message"], err


def test_worker_fastchat_frame_for_nul(procs):
    """FastChat's clients read error_code from a 200 frame: the NUL refusal arrives that way."""
    p = start(procs, "worker")
    resp = post_raw(p.port, b"/worker_generate_stream", json.dumps({"prompt": "a\u0000"}).encode())
    assert resp[0] == 200
    frame = json.loads(resp[2].rstrip(b"\0"))
    assert frame["error_code"] != 0 and "'prompt' contains a NUL" in frame["text"], frame


def test_gateway_long_non_ascii_model_name(procs):
    """A 300-character model name of two-byte letters after one ASCII one, so that a cut by
    bytes falls inside a letter: quoted cut short between letters, in a JSON 404, on the
    generation route and on /v1/models/{id}."""
    p = start(procs, "gateway")
    name = "a" + "é" * 300
    for stream in (False, True):
        body = json.dumps({"model": name, "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        err = openai_error(post_raw(p.port, b"/v1/chat/completions", body.encode()), 404)
        assert err["param"] == "model" and "\ufffd" not in err["message"] and "aéé" in err["message"], err
    err = openai_error(exchange(p.port, b"GET /v1/models/" + name.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"), 404)
    assert "\ufffd" not in err["message"] and "aéé" in err["message"], err
