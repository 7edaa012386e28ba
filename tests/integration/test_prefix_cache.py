"""Prefix caching through the real worker (stories260K, CPU): repeated prompts, the turns of a
conversation and identical requests sent together (the n choices of one request) give exactly
what a worker without the cache gives, and the worker reports what its cache found on /metrics
and /worker_get_status."""
import subprocess
import threading

import requests

from conftest import binary, free_port, need_stories, start_worker
from test_worker import generate, joined, metric

STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
         "her big red ball. Lily was very happy and she ran to find her friend Ben. They played all day "
         "until the sun went down. One day, her mom said")
ENDS = [" that they would go to the beach.", " no.", " it was time to eat lunch", " she could have a cookie"]


def bodies():
    """Prompts sharing the story: greedy, seeded, and one with a penalty (it reads the prompt)."""
    out = [dict(prompt=STORY + e, max_tokens=24, temperature=0) for e in ENDS]
    out += [dict(prompt=STORY + e, max_tokens=24, temperature=0.9, seed=11 + i) for i, e in enumerate(ENDS)]
    out.append(dict(prompt=STORY, max_tokens=24, temperature=0, repetition_penalty=1.3))
    return out


def conversation(worker, turns=3):
    """Each turn resends the history with the last answer and a new question."""
    messages = [{"role": "system", "content": STORY}, {"role": "user", "content": "What did Lily do?"}]
    answers = []
    for k in range(turns):
        status, err, frames = generate(worker, messages=messages, max_tokens=16, temperature=0)
        assert status == 200, err
        _, text, _ = joined(frames)
        answers.append(text)
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": f"And then {k}?"}]
    return answers


def together(worker, body, n):
    """n identical requests at once, as the gateway sends the n choices of one request."""
    out = [None] * n

    def one(i):
        status, err, frames = generate(worker, **body, seed=100 + i)
        assert status == 200, err
        out[i] = joined(frames)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return out


def story_blocks(worker):
    """Full KV blocks the story fills, BOS included."""
    n = requests.post(worker.url + "/count_token", json={"prompt": STORY}, timeout=10).json()["count"]
    return n // 16


def test_cache_on_gives_the_outputs_of_cache_off_and_counts_hits(procs):
    on = start_worker(procs, None, "--enable-prefix-caching")
    off = start_worker(procs, None, "--no-enable-prefix-caching")
    results = {}
    for name, w in (("on", on), ("off", off)):
        got = [joined(generate(w, **b)[2]) for b in bodies()]
        got.append(conversation(w))
        got.append(together(w, dict(prompt=STORY + ENDS[0], max_tokens=20, temperature=0.8), 4))
        results[name] = got
    assert results["on"] == results["off"]

    blocks = story_blocks(on)
    assert blocks >= 3
    hits = metric(on.url, "sluice_worker_prefix_cache_hits_total")
    queries = metric(on.url, "sluice_worker_prefix_cache_queries_total")
    # At least the story's blocks for: every plain prompt after the first, the 4 together (their
    # prompt is the first one's), and the conversation's second and third turns (each resends
    # the one before; the first turn wraps the story in the chat template, so it may miss).
    certain = len(bodies()) - 1 + 4 + 2
    assert hits >= certain * blocks * 16, (hits, blocks)
    assert queries >= metric(on.url, "sluice_worker_prompt_tokens_total")
    assert 0 < metric(on.url, "sluice_worker_prefix_cache_hit_rate") <= 1
    assert metric(on.url, "sluice_worker_kv_blocks_cached") > 0
    assert metric(on.url, "sluice_worker_kv_blocks_free") == metric(on.url, "sluice_worker_kv_blocks_capacity")

    status = requests.post(on.url + "/worker_get_status", timeout=10).json()
    pc = status["prefix_cache"]
    assert pc["enabled"] is True
    assert pc["hit_tokens"] == hits and pc["query_tokens"] == queries
    assert abs(pc["hit_rate"] - hits / queries) < 1e-9
    assert pc["cached_blocks"] > 0
    assert status["queue_length"] == 0 and status["model_names"]

    assert metric(off.url, "sluice_worker_prefix_cache_queries_total") == 0
    assert metric(off.url, "sluice_worker_prefix_cache_hits_total") == 0
    assert metric(off.url, "sluice_worker_kv_blocks_cached") == 0
    pc = requests.get(off.url + "/worker_get_status", timeout=10).json()["prefix_cache"]
    assert pc == {"enabled": False, "query_tokens": 0, "hit_tokens": 0, "hit_rate": 0, "cached_blocks": 0}


def test_a_small_cache_evicts_and_still_answers_the_same(procs):
    """20 blocks for prompts of ~4 blocks each: cached prefixes are evicted as new prompts need
    the room, sequences are preempted, and the outputs still equal the uncached worker's."""
    on = start_worker(procs, None, "--kv-cache-tokens", "320", "--threads", "2")
    off = start_worker(procs, None, "--kv-cache-tokens", "16384", "--no-enable-prefix-caching")
    prompts = [f"{STORY} {i} " + ENDS[i % 4] for i in range(6)] + [STORY + e for e in ENDS]
    ref = [joined(generate(off, prompt=p, max_tokens=32, temperature=0, ignore_eos=True)[2])[0] for p in prompts]
    got = [None] * len(prompts)

    def one(i):
        got[i] = joined(generate(on, prompt=prompts[i], max_tokens=32, temperature=0, ignore_eos=True)[2])[0]

    for rnd in range(2):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert got == ref, f"round {rnd}"
    assert metric(on.url, "sluice_worker_prefix_cache_hits_total") > 0
    assert metric(on.url, "sluice_worker_kv_blocks_free") == metric(on.url, "sluice_worker_kv_blocks_capacity")


def test_contradicting_flags_are_refused():
    p = subprocess.run([binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--device", "cpu",
                        "--no-register", "--port", str(free_port()), "--enable-prefix-caching",
                        "--no-enable-prefix-caching"], capture_output=True, timeout=30)
    assert p.returncode == 2
    assert b"contradict" in p.stderr
    help_text = subprocess.run([binary("sluice-worker"), "--help"], capture_output=True, timeout=30).stdout
    assert b"--no-enable-prefix-caching" in help_text and b"--enable-prefix-caching" in help_text
