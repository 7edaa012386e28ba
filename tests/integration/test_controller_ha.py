"""Controller high availability: workers register with every controller of
--controller-address a,b, the gateway fails over between them, and a restarted controller
knows its workers again within one heartbeat interval. The real binaries, killed for real."""
import re
import threading
import time

import requests

from conftest import binary, free_port, need_stories, start_gateway, start_worker

MODEL = "stories260K"
INTERVAL = 0.5  # the workers' heartbeat interval, seconds


def controller_on(procs, port):
    return procs.start([binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(port),
                        "--heartbeat-expiration", "5"], port, "controller").wait_http("/health")


def workers_of(ctl):
    try:
        return sorted(w["name"] for w in requests.get(ctl.url + "/workers", timeout=2).json()["workers"])
    except requests.RequestException:
        return []


def wait_workers(ctl, want, timeout=20):
    deadline = time.time() + timeout
    while workers_of(ctl) != want:
        assert time.time() < deadline, f"{ctl.url} knows {workers_of(ctl)}, not {want}"
        time.sleep(0.02)


def metric(url, pattern):
    text = requests.get(url + "/metrics", timeout=5).text
    m = re.search(pattern, text, re.M)
    assert m, f"{pattern} not in /metrics"
    return float(m.group(1))


def test_killing_either_of_two_controllers_under_load_fails_no_request(procs):
    need_stories()
    ports = [free_port(), free_port()]
    ctls = [controller_on(procs, p) for p in ports]
    both = ",".join(c.url for c in ctls)
    workers = [start_worker(procs, None, "--model-names", MODEL, "--heartbeat-interval", str(INTERVAL),
                            controller=both) for _ in range(2)]
    names = sorted(w.url for w in workers)
    for c in ctls:
        wait_workers(c, names)
    gw = start_gateway(procs, both)

    stop = threading.Event()
    results, failures = [], []

    def load(i):
        s = requests.Session()
        n = 0
        while not stop.is_set():
            n += 1
            body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "stream": n % 2 == 0}
            try:
                r = s.post(gw.url + "/v1/completions", json=body, timeout=30)
                ok = r.status_code == 200 and (not body["stream"] or r.text.rstrip().endswith("data: [DONE]"))
                ok = ok and "error" not in (r.text if body["stream"] else r.json())
                (results if ok else failures).append((i, r.status_code, r.text[:300]))
            except requests.RequestException as e:
                failures.append((i, 0, repr(e)))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        ctls[0].kill()  # SIGKILL: calls in flight to it break, new ones are refused
        time.sleep(1.5)
        served_without_first = len(results)

        # Back on the same port with an empty registry: the workers' next heartbeats tell it
        # (exist: false -> register), within one interval of its start.
        ctls[0] = controller_on(procs, ports[0])
        started = time.time()  # it answers: from here the workers' next heartbeats find it
        wait_workers(ctls[0], names, timeout=10)
        rebuilt = time.time() - started
        assert rebuilt < INTERVAL + 1.0, f"the restarted controller took {rebuilt:.2f} s to know its workers"
        time.sleep(1.0)  # the gateway's probe finds it back

        ctls[1].kill()
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, f"{len(failures)} failed of {len(results) + len(failures)}: {failures[:5]}"
    assert served_without_first > 20 and len(results) > served_without_first + 20, len(results)
    assert metric(gw.url, r'^sluice_gateway_controller_up\{controller="%s"\} (\S+)' % re.escape(ctls[1].url)) == 0


def test_the_gateway_prefers_a_healthy_controller_after_a_failure(procs):
    need_stories()
    ctl = controller_on(procs, free_port())
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    w = start_worker(procs, None, "--model-names", MODEL, controller=ctl.url)
    wait_workers(ctl, [w.url])
    gw = start_gateway(procs, f"{dead},{ctl.url}")
    for _ in range(6):
        r = requests.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                          timeout=30)
        assert r.status_code == 200, r.text
    # At most the first request found the first controller down (unless the probe did first);
    # the others went straight to the healthy one.
    assert metric(gw.url, r"^sluice_gateway_controller_failovers_total (\S+)") <= 1
    assert metric(gw.url, r'^sluice_gateway_controller_up\{controller="%s"\} (\S+)' % re.escape(dead)) == 0
    assert metric(gw.url, r'^sluice_gateway_controller_up\{controller="%s"\} (\S+)' % re.escape(ctl.url)) == 1
    r = requests.get(gw.url + "/v1/models", timeout=10)
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == [MODEL]


def test_no_controller_reachable_is_503_not_a_hang(procs):
    gw = start_gateway(procs, f"http://127.0.0.1:{free_port()},http://127.0.0.1:{free_port()}")
    r = requests.post(gw.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}, timeout=10)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text


def test_a_restarted_controller_knows_its_workers_within_one_heartbeat(procs):
    need_stories()
    port = free_port()
    ctl = controller_on(procs, port)
    interval = 1.0
    w = start_worker(procs, None, "--heartbeat-interval", str(interval), controller=ctl.url)
    wait_workers(ctl, [w.url])
    ctl.kill()
    time.sleep(interval * 1.5)  # at least one heartbeat fails meanwhile
    ctl = controller_on(procs, port)
    started = time.time()
    wait_workers(ctl, [w.url], timeout=10)
    took = time.time() - started
    assert took < interval + 0.75, f"{took:.2f} s: more than one heartbeat interval ({interval} s)"
