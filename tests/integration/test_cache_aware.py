"""Cache-aware dispatch: the controller (--dispatch-method cache_aware) sends requests with the
same prefix_key to the same worker, and the gateway sends a key that keeps a conversation on
one worker; the key is optional and other controllers ignore it. Then the trio end to end: a
conversation's turns land where their history is cached, and the n choices of one request
share one prefill."""
import time

import openai
import pytest
import requests

from conftest import binary, free_port, need_stories, start_controller, start_worker
from test_gateway_trio import requests_served
from test_worker import metric

pytestmark = pytest.mark.timeout(120)

MODEL = "stories260K"
NAMES = [f"http://127.0.0.1:{p}" for p in (31001, 31002, 31003)]


def register_all(ctl):
    """Registers (or re-registers, which resets their queue lengths) three idle fake workers."""
    for n in NAMES:
        r = requests.post(ctl.url + "/register_worker", json={
            "worker_name": n, "check_heart_beat": False,
            "worker_status": {"model_names": ["m"], "speed": 1, "queue_length": 0}}, timeout=10)
        assert r.status_code == 200, r.text


def address(ctl, key=None, **extra):
    body = {"model": "m", **extra}
    if key is not None:
        body["prefix_key"] = key
    r = requests.post(ctl.url + "/get_worker_address", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["address"]


def test_controller_sends_a_key_to_one_worker(procs):
    ctl = start_controller(procs, "--dispatch-method", "cache_aware")
    homes = set()
    for k in range(24):
        register_all(ctl)
        key = f"{k * 7919:016x}"
        first = address(ctl, key)
        assert all(address(ctl, key) == first for _ in range(5)), key
        homes.add(first)
        # A retry that excludes the key's worker gets another, the same one every time.
        again = {address(ctl, key, exclude=[first]) for _ in range(3)}
        assert len(again) == 1 and first not in again
    assert homes == set(NAMES), "keys spread over every worker"

    # A hot key piles at most 16 requests over the least loaded worker, then overflows.
    register_all(ctl)
    picks = [address(ctl, "hot") for _ in range(40)]
    assert picks[:17] == [picks[0]] * 17
    assert len(set(picks)) == 3

    # No key: shortest queue, which spreads.
    register_all(ctl)
    assert len({address(ctl) for _ in range(6)}) == 3

    for bad in (7, ["a"], {"a": 1}, "k" * 300):
        r = requests.post(ctl.url + "/get_worker_address", json={"model": "m", "prefix_key": bad}, timeout=10)
        assert r.status_code == 400, bad
        assert r.json()["error"]["param"] == "prefix_key"


def test_other_policies_ignore_the_key(procs):
    ctl = start_controller(procs)  # shortest_queue, as FastChat's
    register_all(ctl)
    assert len({address(ctl, "same key") for _ in range(6)}) == 3
    r = subprocess_run([binary("sluice-controller"), "--dispatch-method", "nope", "--port", str(free_port())])
    assert r.returncode == 2 and b"cache_aware" in r.stderr
    assert b"cache_aware" in subprocess_run([binary("sluice-controller"), "--help"]).stdout


def subprocess_run(args):
    import subprocess
    return subprocess.run(args, capture_output=True, timeout=30)


@pytest.fixture
def cache_aware_trio(procs):
    need_stories()
    gw_bin = binary("sluice-gateway")
    ctl = start_controller(procs, "--dispatch-method", "cache_aware")
    # Frequent heartbeats: the controller's counted queues fall back to the truth (idle) between
    # these sequential requests, so no key overflows to the shortest queue.
    workers = [start_worker(procs, None, "--model-names", MODEL, "--heartbeat-interval", "0.1", controller=ctl.url)
               for _ in range(2)]
    deadline = time.time() + 20
    while len(requests.get(ctl.url + "/workers", timeout=5).json()["workers"]) < 2:
        assert time.time() < deadline, "workers did not register"
        time.sleep(0.05)
    port = free_port()
    gw = procs.start([gw_bin, "--host", "127.0.0.1", "--port", str(port), "--controller-address", ctl.url],
                     port, "gateway").wait_http("/health")
    return gw, workers


STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
         "her big red ball. One day, her mom said")


def test_conversations_stay_on_their_worker_and_n_shares_the_prefill(cache_aware_trio):
    gw, workers = cache_aware_trio
    c = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", max_retries=0, timeout=60)
    homes = []
    for conv in range(16):
        messages = [{"role": "system", "content": "You tell short stories."},
                    {"role": "user", "content": f"Tell me story number {conv} about Lily and Ben."}]
        served = []
        for turn in range(3):
            before = [requests_served(w) for w in workers]
            r = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
            after = [requests_served(w) for w in workers]
            served.append([a - b for a, b in zip(after, before)].index(1))
            messages += [{"role": "assistant", "content": r.choices[0].message.content},
                         {"role": "user", "content": "And then?"}]
        assert served == [served[0]] * 3, f"conversation {conv} moved: {served}"
        homes.append(served[0])
    # The workers' names carry random ports: 16 keys all on one of two workers is a 2^-15 chance.
    assert set(homes) == {0, 1}, "conversations spread over both workers"
    hits = sum(metric(w.url, "sluice_worker_prefix_cache_hits_total") for w in workers)
    assert hits >= 16 * 2 * 16, "each later turn maps at least a block of its history"

    # n = 4 choices of a new prompt: one worker, one prefill; the other three map its blocks
    # (waiting for them when they arrive while the first computes them).
    n_prompt = requests.post(workers[0].url + "/count_token", json={"prompt": STORY}, timeout=10).json()["count"]
    before = [metric(w.url, "sluice_worker_prefix_cache_hits_total") for w in workers]
    r = c.completions.create(model=MODEL, prompt=STORY, max_tokens=12, temperature=0.9, seed=3, n=4)
    assert len(r.choices) == 4 and r.usage.prompt_tokens == n_prompt
    gained = [metric(w.url, "sluice_worker_prefix_cache_hits_total") - b for w, b in zip(workers, before)]
    assert sorted(gained)[0] == 0, gained
    assert max(gained) >= 3 * ((n_prompt - 1) // 16) * 16, (gained, n_prompt)
