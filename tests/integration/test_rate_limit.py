"""Rate limits per API key at the gateway (--rate-limit-file): requests and tokens per minute,
429 with Retry-After and OpenAI's x-ratelimit-* headers, token reservations settled with the
real usage, and SIGHUP reloading both the limits and the API key file."""
import json
import signal
import time

import openai
import pytest
import requests

from conftest import need_stories, start_controller, start_gateway, start_worker

MODEL = "stories260K"


@pytest.fixture
def backend(procs):
    need_stories()
    ctl = start_controller(procs)
    start_worker(procs, None, "--model-names", MODEL, controller=ctl.url)
    deadline = time.time() + 20
    while not requests.get(ctl.url + "/workers", timeout=5).json()["workers"]:
        assert time.time() < deadline, "the worker did not register"
        time.sleep(0.02)
    return ctl


def post(gw, key, max_tokens=4, prompt="Once upon a time"):
    return requests.post(gw.url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, timeout=30,
                         json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens})


def test_requests_per_minute_per_key(procs, tmp_path, backend):
    limits = tmp_path / "limits.txt"
    limits.write_text("# key rpm tpm\ndefault 2 0\nsk-big 100 0\n")
    gw = start_gateway(procs, backend.url, "--api-keys", "sk-small,sk-big", "--rate-limit-file", str(limits))
    for left in (1, 0):
        r = post(gw, "sk-small")
        assert r.status_code == 200, r.text
        assert r.headers["x-ratelimit-limit-requests"] == "2"
        assert r.headers["x-ratelimit-remaining-requests"] == str(left)
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in r.headers, "no token limit, no token headers"
    r = post(gw, "sk-small")
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "rate_limit_exceeded" and "requests per minute" in err["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 30  # one request comes back every 30 s
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["X-Request-Id"]
    # Another key has its own buckets; the OpenAI client reads the 429 as a RateLimitError.
    assert post(gw, "sk-big").headers["x-ratelimit-remaining-requests"] == "99"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-small", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=2)
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'sluice_gateway_rate_limited_total{limit="requests"} 2' in text


def test_tokens_are_reserved_then_settled_with_the_usage(procs, tmp_path, backend):
    limits = tmp_path / "limits.json"
    limits.write_text(json.dumps({"default": {"tpm": 100}}))
    gw = start_gateway(procs, backend.url, "--rate-limit-file", str(limits))  # no API keys: one anonymous key

    def completion(max_tokens, **extra):
        return requests.post(gw.url + "/v1/completions", timeout=30, json={
            "model": MODEL, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, **extra})

    # Reserved at admission: the prompt (16 bytes, estimated 4 tokens) and max_tokens.
    r = completion(80, stop=[","])
    assert r.status_code == 200, r.text
    assert r.headers["x-ratelimit-limit-tokens"] == "100"
    assert 16 <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 18
    used = r.json()["usage"]["total_tokens"]
    assert used < 20, "the stop string ends it early"
    # Settled: what the answer did not use came back before the next admission.
    r = completion(1)
    assert r.status_code == 200
    remaining = int(r.headers["x-ratelimit-remaining-tokens"])
    assert 100 - used - 5 <= remaining <= 100 - 5, (remaining, used)
    r = completion(200)
    assert r.status_code == 429
    assert "tokens per minute" in r.json()["error"]["message"]
    assert int(r.headers["Retry-After"]) >= 1
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert 'sluice_gateway_rate_limited_total{limit="tokens"} 1' in text


def test_sighup_reloads_the_limits_and_the_api_keys(procs, tmp_path, backend):
    limits, keys = tmp_path / "limits.txt", tmp_path / "keys.txt"
    limits.write_text("default 1 0\n")
    keys.write_text("sk-old\n")
    gw = start_gateway(procs, backend.url, "--api-key-file", str(keys), "--rate-limit-file", str(limits))
    assert post(gw, "sk-old").status_code == 200
    assert post(gw, "sk-old").status_code == 429
    assert post(gw, "sk-new").status_code == 401

    limits.write_text("default 1 0\nsk-old 50 0\nsk-new 5 0\n")
    keys.write_text("sk-old\nsk-new\n")
    gw.p.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while post(gw, "sk-new").status_code == 401:
        assert time.time() < deadline, "SIGHUP did not reload the key file"
        time.sleep(0.05)
    r = post(gw, "sk-old")
    assert r.status_code == 200, "the new limit applies to the key's bucket, what was used kept"
    assert r.headers["x-ratelimit-limit-requests"] == "50"
    assert int(r.headers["x-ratelimit-remaining-requests"]) == 48

    # A broken file leaves everything as it was, and the gateway serving.
    limits.write_text("sk-old fifty 0\n")
    keys.unlink()
    gw.p.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    r = post(gw, "sk-new")
    assert r.status_code == 200 and r.headers["x-ratelimit-limit-requests"] == "5"
    assert gw.p.poll() is None
    assert "keeping the rate limits as they were" in gw.output()


def test_a_bad_limits_file_stops_the_gateway_at_start(procs, tmp_path, backend):
    limits = tmp_path / "limits.txt"
    limits.write_text("sk-a 10\n")
    from conftest import binary, free_port
    port = free_port()
    p = procs.start([binary("sluice-gateway"), "--port", str(port), "--controller-address", backend.url,
                     "--rate-limit-file", str(limits)], port, "gateway")
    assert p.p.wait(timeout=10) != 0
    assert "line 1" in p.output()


def test_an_emptied_key_file_refuses_everyone_instead_of_opening_the_gateway(procs, tmp_path, backend):
    keys = tmp_path / "keys.txt"
    keys.write_text("sk-a\n")
    gw = start_gateway(procs, backend.url, "--api-key-file", str(keys))
    assert post(gw, "sk-a").status_code == 200
    keys.write_text("# every key revoked\n")
    gw.p.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while post(gw, "sk-a").status_code != 401:
        assert time.time() < deadline, "SIGHUP did not reload the emptied key file"
        time.sleep(0.05)
    assert post(gw, "anything").status_code == 401
    r = requests.post(gw.url + "/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1}, timeout=10)
    assert r.status_code == 401, "no key at all is refused too, not let in"
    assert "none was read" in gw.output()
