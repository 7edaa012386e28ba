"""What operators see: request ids (X-Request-Id) from the client to the worker, W3C
traceparent through gateway -> controller -> worker with one span line per hop, the gateway's
JSON access lines, every program's /metrics checked by promtool after real traffic, and the
controller's per-model autoscaling gauges."""
import json
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from conftest import REPO, need_stories, slow_model, start_controller, start_gateway, start_worker

MODEL = "stories260K"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def json_lines(path, type_=None):
    out = []
    for line in Path(path).read_text(errors="replace").splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if type_ is None or obj.get("type") == type_:
                out.append(obj)
    return out


def wait_for(fn, what, timeout=10):
    deadline = time.time() + timeout
    while True:
        v = fn()
        if v:
            return v
        assert time.time() < deadline, what
        time.sleep(0.02)


@pytest.fixture
def trio(procs, tmp_path):
    need_stories()
    logs = {name: tmp_path / f"{name}.jsonl" for name in ("controller", "worker", "gateway")}
    ctl = start_controller(procs, "--access-log", str(logs["controller"]))
    w = start_worker(procs, None, "--model-names", MODEL, "--access-log", str(logs["worker"]), controller=ctl.url)
    wait_for(lambda: requests.get(ctl.url + "/workers", timeout=5).json()["workers"], "the worker registers")
    gw = start_gateway(procs, ctl.url, "--access-log", str(logs["gateway"]))
    return ctl, w, gw, logs


def completion(gw, headers=None, **extra):
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 4, **extra}
    return requests.post(gw.url + "/v1/completions", json=body, headers=headers or {}, timeout=30)


def test_request_ids_are_kept_or_made_and_reach_the_worker(trio):
    _, _, gw, logs = trio
    r = completion(gw, {"X-Request-Id": "client-id-42"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "client-id-42"
    req = wait_for(lambda: [l for l in json_lines(logs["worker"], "request") if l["request_id"] == "client-id-42"],
                   "the worker logs the request under the client's id")[0]
    assert req["endpoint"] == "/generate" and req["status"] == 200 and req["completion_tokens"] == 4
    assert req["prompt_tokens"] > 0 and req["finish_reason"] == "length" and req["ttft_ms"] >= 0

    for bad in ("x" * 200, "has space", "caf\u00e9"):
        r = completion(gw, {"X-Request-Id": bad.encode("utf-8")})
        assert r.status_code == 200
        assert re.fullmatch(r"req_[0-9a-f]{32}", r.headers["X-Request-Id"]), r.headers["X-Request-Id"]
    r = completion(gw)
    made = r.headers["X-Request-Id"]
    assert re.fullmatch(r"req_[0-9a-f]{32}", made)
    wait_for(lambda: any(l["request_id"] == made for l in json_lines(logs["worker"], "request")), "made id on worker")
    # Errors carry it too.
    r = requests.post(gw.url + "/v1/completions", json={"model": MODEL}, headers={"X-Request-Id": "bad-body-1"},
                      timeout=10)
    assert r.status_code == 400 and r.headers["X-Request-Id"] == "bad-body-1"


def test_access_lines_say_what_happened_without_the_prompt(trio, procs, tmp_path):
    ctl, _, gw, logs = trio
    secret = "The launch code is 0000"
    r = completion(gw, {"X-Request-Id": "acc-1"}, prompt=secret, max_tokens=3)
    assert r.status_code == 200
    usage = r.json()["usage"]
    line = wait_for(lambda: [l for l in json_lines(logs["gateway"], "access") if l["request_id"] == "acc-1"],
                    "the access line")[0]
    assert line["status"] == 200 and line["model"] == MODEL and line["route"] == "/v1/completions"
    assert line["prompt_tokens"] == usage["prompt_tokens"] and line["completion_tokens"] == usage["completion_tokens"]
    assert line["worker"].startswith("http://127.0.0.1:") and line["client"].startswith("127.0.0.1:")
    assert line["ttft_ms"] >= 0 and line["duration_ms"] >= line["ttft_ms"] and line["trace_id"]
    assert secret not in logs["gateway"].read_text()

    r = completion(gw, {"X-Request-Id": "acc-404"}, model="no-such-model")
    assert r.status_code == 404
    line = wait_for(lambda: [l for l in json_lines(logs["gateway"], "access") if l["request_id"] == "acc-404"],
                    "the 404's access line")[0]
    assert line["status"] == 404 and "does not exist" in line["error"]
    requests.get(gw.url + "/health", timeout=5)
    assert not [l for l in json_lines(logs["gateway"], "access") if l["path"] == "/health"], "probes are not logged"

    # --log-requests puts the prompt in, for whoever asked for it.
    gw2 = start_gateway(procs, ctl.url, "--access-log", str(tmp_path / "gw2.jsonl"), "--log-requests")
    assert completion(gw2, {"X-Request-Id": "acc-2"}, prompt=secret, max_tokens=2).status_code == 200
    line = wait_for(lambda: [l for l in json_lines(tmp_path / "gw2.jsonl", "access") if l["request_id"] == "acc-2"],
                    "the logged request")[0]
    assert line["prompt"] == [secret]


def test_access_lines_go_to_standard_output_by_default(procs):
    need_stories()
    ctl = start_controller(procs)
    start_worker(procs, None, "--model-names", MODEL, controller=ctl.url)
    wait_for(lambda: requests.get(ctl.url + "/workers", timeout=5).json()["workers"], "the worker registers")
    gw = start_gateway(procs, ctl.url)
    assert completion(gw, {"X-Request-Id": "stdout-1"}).status_code == 200
    wait_for(lambda: [l for l in json_lines(gw.log_path, "access") if l["request_id"] == "stdout-1"], "stdout line")


def spans(path, trace):
    return {s["name"]: s for s in json_lines(path, "span") if s["trace_id"] == trace}


def test_traceparent_makes_one_span_per_hop_under_its_caller(trio):
    _, _, gw, logs = trio
    r = completion(gw, {"traceparent": f"00-{TRACE}-{PARENT}-01", "X-Request-Id": "traced-1"})
    assert r.status_code == 200
    g = wait_for(lambda: (lambda s: s if len(s) == 3 else None)(spans(logs["gateway"], TRACE)), "gateway spans")
    c = wait_for(lambda: spans(logs["controller"], TRACE), "controller span")
    w = wait_for(lambda: spans(logs["worker"], TRACE), "worker span")
    root = g["gateway.request"]
    assert root["parent_span_id"] == PARENT and root["request_id"] == "traced-1"
    assert g["gateway.get_worker_address"]["parent_span_id"] == root["span_id"]
    assert g["gateway.generate"]["parent_span_id"] == root["span_id"]
    assert c["controller.get_worker_address"]["parent_span_id"] == g["gateway.get_worker_address"]["span_id"]
    assert w["worker.generate"]["parent_span_id"] == g["gateway.generate"]["span_id"]
    ids = [root["span_id"], g["gateway.get_worker_address"]["span_id"], g["gateway.generate"]["span_id"],
           c["controller.get_worker_address"]["span_id"], w["worker.generate"]["span_id"], PARENT]
    assert len(set(ids)) == len(ids), "each hop makes its own span id"
    for s in [*g.values(), *c.values(), *w.values()]:
        assert s["duration_ms"] >= 0 and re.fullmatch(r"[0-9a-f]{16}", s["span_id"])
    assert root["duration_ms"] >= g["gateway.generate"]["duration_ms"] >= w["worker.generate"]["duration_ms"]
    assert c["controller.get_worker_address"]["request_id"] == "traced-1"

    # An invalid traceparent starts a new trace; an unsampled one is followed but not logged.
    r = completion(gw, {"traceparent": f"00-{TRACE.upper()}-{PARENT}-01", "X-Request-Id": "traced-2"})
    line = wait_for(lambda: [l for l in json_lines(logs["gateway"], "access") if l["request_id"] == "traced-2"],
                    "access line")[0]
    assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]) and line["trace_id"] != TRACE.lower()
    assert spans(logs["gateway"], line["trace_id"])["gateway.request"]["parent_span_id"] is None
    quiet = "0af7651916cd43dd8448eb211c80319c"
    r = completion(gw, {"traceparent": f"00-{quiet}-{PARENT}-00", "X-Request-Id": "traced-3"})
    wait_for(lambda: [l for l in json_lines(logs["worker"], "request") if l["request_id"] == "traced-3"], "request")
    time.sleep(0.2)
    assert not spans(logs["gateway"], quiet) and not spans(logs["worker"], quiet)
    assert [l for l in json_lines(logs["worker"], "request") if l["request_id"] == "traced-3"][0]["trace_id"] == quiet


def promtool():
    path = os.environ.get("PROMTOOL") or shutil.which("promtool") or str(REPO / "build" / "tools" / "promtool")
    if not Path(path).exists():
        if os.environ.get("PROMTOOL"):
            pytest.fail(f"PROMTOOL={path} does not exist (make deps unpacks it)")
        pytest.skip("promtool not found: `make deps` unpacks it into build/tools/")
    return path


def test_every_programs_metrics_pass_promtool_after_traffic(trio):
    ctl, w, gw, _ = trio
    tool = promtool()
    assert completion(gw).status_code == 200
    assert completion(gw, stream=True).status_code == 200
    assert completion(gw, model="nope").status_code == 404
    requests.get(gw.url + "/v1/models", timeout=5)
    requests.post(w.url + "/generate", json={"prompt": "x", "max_tokens": 0}, timeout=5)  # a rejected one
    for proc in (gw, ctl, w):
        text = requests.get(proc.url + "/metrics", timeout=5).text
        r = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
            f"{proc.url}/metrics: {r.stdout}{r.stderr}"
    text = requests.get(gw.url + "/metrics", timeout=5).text
    assert f'sluice_gateway_controller_up{{controller="{ctl.url}"}} 1' in text
    text = requests.get(ctl.url + "/metrics", timeout=5).text
    assert f'sluice_controller_model_workers{{model="{MODEL}"}} 1' in text


def controller_gauge(ctl, name, model):
    m = re.search(r'^%s\{model="%s"\} (\S+)$' % (name, re.escape(model)),
                  requests.get(ctl.url + "/metrics", timeout=5).text, re.M)
    return float(m.group(1)) if m else None


def test_the_controller_exports_queue_length_and_wait_for_autoscaling(procs, tmp_path):
    need_stories()
    ctl = start_controller(procs, "--heartbeat-expiration", "1")
    w = start_worker(procs, tmp_path / "slow", *slow_model(tmp_path / "slow"), "--model-names", "slow",
                     "--max-num-seqs", "1", "--heartbeat-interval", "0.2", controller=ctl.url)
    wait_for(lambda: controller_gauge(ctl, "sluice_controller_model_workers", "slow") == 1, "registered")
    assert controller_gauge(ctl, "sluice_controller_model_queue_wait_seconds", "slow") == 0
    # One long generation holds the only sequence slot; the second waits for it.
    streams = []

    def gen():
        streams.append(requests.post(w.url + "/generate", stream=True, timeout=60,
                                     json={"prompt": "Once", "max_tokens": 2000, "ignore_eos": True}))

    threads = [threading.Thread(target=gen) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    try:
        wait_for(lambda: (controller_gauge(ctl, "sluice_controller_model_queue_wait_seconds", "slow") or 0) > 0.3,
                 "the waiting request's age reaches the controller", timeout=20)
        assert controller_gauge(ctl, "sluice_controller_model_queue_length", "slow") == 2
    finally:
        for s in streams:
            s.close()
    wait_for(lambda: controller_gauge(ctl, "sluice_controller_model_queue_length", "slow") == 0,
             "the queue empties once the clients leave", timeout=20)
    assert controller_gauge(ctl, "sluice_controller_model_queue_wait_seconds", "slow") == 0
    w.kill()
    wait_for(lambda: controller_gauge(ctl, "sluice_controller_model_workers", "slow") == 0,
             "no live worker: 0, not gone", timeout=20)
