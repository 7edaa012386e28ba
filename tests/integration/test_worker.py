"""The real sluice-worker on stories260K (CPU): Hugging Face's greedy outputs, FastChat's
stream format, batch invariance (also under preemption), aborts, seeds, stops and errors."""
import json
import socket
import subprocess
import threading
import time

import pytest
import requests

from conftest import REPO, binary, free_port, need_stories, reference, start_controller, start_worker


def generate(worker, **body):
    """POST /generate and collect the ndjson frames."""
    r = requests.post(worker.url + "/generate", json=body, stream=True, timeout=60)
    if r.status_code != 200:
        return r.status_code, r.json(), []
    frames = [json.loads(line) for line in r.iter_lines() if line]
    return 200, None, frames


def joined(frames):
    ids = [i for f in frames for i in f["token_ids"]]
    return ids, "".join(f["text"] for f in frames), frames[-1]["finish_reason"]


@pytest.fixture(scope="module")
def shared_worker():
    """One worker for the read-only tests of this module."""
    from conftest import Proc
    port = free_port()
    p = Proc([binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--device", "cpu",
              "--port", str(port), "--no-register", "--threads", "2", "--model-names", "stories"],
             port, "worker-shared")
    try:
        yield p.wait_http("/health", timeout=60)
    finally:
        p.kill()


@pytest.mark.parametrize("model", ["hf", "stories260K.gguf"])
def test_greedy_equals_hugging_face(procs, model):
    ref = reference()["prompts"]
    w = start_worker(procs, need_stories() / model)
    for prompt, expected in ref.items():
        status, err, frames = generate(w, prompt=prompt, max_tokens=64, temperature=0)
        assert status == 200, err
        ids, text, finish = joined(frames)
        assert ids == expected["greedy_ids"], prompt
        assert text == expected["greedy_text"], prompt
        assert finish == "length"
        assert frames[-1]["usage"] == {"prompt_tokens": len(expected["prompt_ids"]),
                                       "completion_tokens": 64,
                                       "total_tokens": len(expected["prompt_ids"]) + 64}


def test_prompt_token_ids_and_tokenize(shared_worker):
    ref = reference()["prompts"]["Once upon a time"]
    r = requests.post(shared_worker.url + "/tokenize", json={"prompt": "Once upon a time"}, timeout=10)
    assert r.json()["tokens"] == ref["prompt_ids"]
    status, _, frames = generate(shared_worker, prompt_token_ids=ref["prompt_ids"], max_tokens=8, temperature=0)
    assert joined(frames)[0] == ref["greedy_ids"][:8]
    r = requests.post(shared_worker.url + "/detokenize", json={"tokens": ref["greedy_ids"]}, timeout=10)
    assert r.json()["prompt"].strip() == ref["greedy_text"].strip()


def test_fastchat_stream_and_blocking(shared_worker):
    ref = reference()["prompts"]["The cat"]
    r = requests.post(shared_worker.url + "/worker_generate_stream",
                      json={"prompt": "The cat", "temperature": 0, "max_new_tokens": 16, "echo": False},
                      stream=True, timeout=30)
    assert r.status_code == 200
    raw = r.content
    frames = [json.loads(x) for x in raw.split(b"\0") if x]
    assert len(frames) >= 2
    texts = [f["text"] for f in frames]
    for a, b in zip(texts, texts[1:]):
        assert b.startswith(a), "FastChat frames carry cumulative text"
    assert all(f["error_code"] == 0 for f in frames)
    assert frames[-1]["finish_reason"] == "length"
    assert frames[-1]["usage"]["completion_tokens"] == 16
    assert ref["greedy_text"].startswith(frames[-1]["text"])
    r = requests.post(shared_worker.url + "/worker_generate",
                      json={"prompt": "The cat", "temperature": 0, "max_new_tokens": 16}, timeout=30)
    assert r.json()["text"] == frames[-1]["text"]
    assert requests.post(shared_worker.url + "/worker_get_status", timeout=5).json()["model_names"] == ["stories"]
    assert requests.post(shared_worker.url + "/count_token", json={"prompt": "The cat"}, timeout=5).json()["count"] == len(ref["prompt_ids"])
    assert requests.post(shared_worker.url + "/model_details", timeout=5).json()["context_length"] == 512


PROMPTS = ["Once upon a time", "The cat", "Lily and Tom went to the park", "A big dog",
           "One day", "Tim had a red ball", "The sun was", "Sue liked to", "There was a bird",
           "Mom said", "The little boy", "In the garden", "Ben and Mia", "The old tree", "A girl", "Max ran"]


def run_concurrently(url, prompts, max_tokens):
    results = [None] * len(prompts)

    # Every thread sends at the same moment, so that the requests overlap in the worker as much
    # as this machine lets them (a thread started late could find the others finished).
    start = threading.Barrier(len(prompts), timeout=60)

    def one(i):
        start.wait()
        r = requests.post(url + "/generate", json={"prompt": prompts[i], "max_tokens": max_tokens,
                                                   "temperature": 0, "ignore_eos": True}, stream=True, timeout=120)
        frames = [json.loads(l) for l in r.iter_lines() if l]
        results[i] = joined(frames)[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    return results


@pytest.mark.parametrize("kv_tokens", [16384, 320])
def test_batch_invariance(procs, kv_tokens):
    """16 concurrent greedy requests give exactly the outputs of 16 sequential ones; with a
    KV cache of 320 tokens (20 blocks) they cannot all fit, so some are preempted."""
    w = start_worker(procs, None, "--kv-cache-tokens", str(kv_tokens), "--threads", "2")
    sequential = []
    for p in PROMPTS:
        _, _, frames = generate(w, prompt=p, max_tokens=40, temperature=0, ignore_eos=True)
        sequential.append(joined(frames)[0])
    # On a loaded machine one burst may be served nearly one request at a time and never fill the
    # small cache; every burst must equal the sequential outputs, and within five bursts the
    # small cache must have forced a preemption.
    for _ in range(5):
        concurrent = run_concurrently(w.url, PROMPTS, 40)
        assert concurrent == sequential
        preemptions = metric(w.url, "sluice_worker_preemptions_total")
        if kv_tokens != 320 or preemptions > 0:
            break
    if kv_tokens == 320:
        assert preemptions > 0, "the small cache should have forced preemption"


def metric(url, name):
    text = requests.get(url + "/metrics", timeout=5).text
    return float(next(l.split()[1] for l in text.splitlines() if l.startswith(name + " ")))


def slow_dummy_model(tmp_path):
    """A random-weight model wide enough that a long generation is still running when the
    client goes away (stories260K would finish 500 tokens before we could look)."""
    import shutil
    d = tmp_path / "slow-dummy"
    d.mkdir()
    tiny = REPO / "examples" / "models" / "tiny-dummy"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / f, d / f)
    cfg = json.loads((tiny / "config.json").read_text())
    cfg.update(hidden_size=1024, intermediate_size=4096, num_hidden_layers=8, num_attention_heads=8,
               num_key_value_heads=8)
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_client_disconnect_frees_blocks(procs, tmp_path):
    w = start_worker(procs, slow_dummy_model(tmp_path), "--load-format", "dummy")
    total = metric(w.url, "sluice_worker_kv_blocks_capacity")
    s = socket.create_connection(("127.0.0.1", w.port), timeout=10)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True, "temperature": 0})
    s.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    assert b"200" in s.recv(4096)
    deadline = time.time() + 5
    while metric(w.url, "sluice_worker_requests_running") < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert metric(w.url, "sluice_worker_requests_running") == 1
    assert metric(w.url, "sluice_worker_kv_blocks_free") < total
    s.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        if (metric(w.url, "sluice_worker_requests_running") == 0 and
                metric(w.url, "sluice_worker_kv_blocks_free") == total):
            break
        time.sleep(0.05)
    assert metric(w.url, "sluice_worker_requests_running") == 0
    assert metric(w.url, "sluice_worker_kv_blocks_free") == total
    assert metric(w.url, "sluice_worker_requests_aborted_total") == 1


def test_seed_and_stop(shared_worker):
    a = joined(generate(shared_worker, prompt="The cat", max_tokens=24, temperature=1.0, seed=7)[2])
    b = joined(generate(shared_worker, prompt="The cat", max_tokens=24, temperature=1.0, seed=7)[2])
    c = joined(generate(shared_worker, prompt="The cat", max_tokens=24, temperature=1.0, seed=8)[2])
    assert a == b
    assert a[0] != c[0]
    full = reference()["prompts"]["Once upon a time"]["greedy_text"]
    stop = "little girl"
    _, text, finish = joined(generate(shared_worker, prompt="Once upon a time", max_tokens=64,
                                      temperature=0, stop=[stop])[2])
    assert finish == "stop"
    assert text == full[:full.index(stop)]


def test_unseeded_requests_differ_and_seeds_reproduce(procs):
    """Without --seed each worker draws its own default seed: the same unseeded request differs
    from worker to worker (and from request to request). A request's seed, or --seed N for the
    defaults, makes the output reproducible."""
    body = dict(prompt="Once upon a time", max_tokens=40, temperature=1.0)
    a, b = start_worker(procs), start_worker(procs)
    first_a = joined(generate(a, **body)[2])[0]
    assert first_a != joined(generate(b, **body)[2])[0], "two fresh workers sampled the same text"
    assert first_a != joined(generate(a, **body)[2])[0]
    assert joined(generate(a, seed=11, **body)[2]) == joined(generate(b, seed=11, **body)[2])
    c, d = start_worker(procs, None, "--seed", "5"), start_worker(procs, None, "--seed", "5")
    assert joined(generate(c, **body)[2]) == joined(generate(d, **body)[2])
    assert "--seed" in run_worker_expecting_failure(need_stories() / "hf", "--seed", "often")


def test_valid_token_id_fields_accepted(shared_worker):
    """In-vocabulary stop_token_ids stop the generation; a valid logit_bias is applied: +100 on
    a stop token makes it the first token, which ends the generation."""
    ref = reference()["prompts"]["Once upon a time"]
    stop_id = ref["greedy_ids"][5]
    status, err, frames = generate(shared_worker, prompt="Once upon a time", max_tokens=64, temperature=0,
                                   stop_token_ids=[stop_id, 511], logit_bias={"0": -100})
    assert status == 200, err
    ids, _, finish = joined(frames)
    assert finish == "stop" and ids == ref["greedy_ids"][:ref["greedy_ids"].index(stop_id) + 1]
    status, err, frames = generate(shared_worker, prompt="Once upon a time", max_tokens=64, temperature=0,
                                   stop_token_ids=[stop_id, 511], logit_bias={"0": -100, "511": 100})
    assert status == 200, err
    assert joined(frames)[0] == [511] and joined(frames)[2] == "stop"


@pytest.mark.parametrize("body,param", [
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": 5}, "prompt"),
    ({}, "prompt"),
    ({"prompt": "x", "stop": [1]}, "stop"),
    ({"prompt": "", "add_special_tokens": False}, "prompt"),
    ({"prompt": "x", "ignore_eos": "yes"}, "ignore_eos"),
    ({"prompt": "x", "top_p": 1.5}, "top_p"),
    ({"prompt": "x", "top_p": -0.5}, "top_p"),
    ({"prompt": "x", "stop_token_ids": [-1]}, "stop_token_ids"),
    ({"prompt": "x", "stop_token_ids": [512]}, "stop_token_ids"),
    ({"prompt": "x", "stop_token_ids": [3, "4"]}, "stop_token_ids"),
    ({"prompt": "x", "logit_bias": {"512": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"x": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"5": 101}}, "logit_bias"),
])
def test_bad_requests(shared_worker, body, param):
    r = requests.post(shared_worker.url + "/generate", json=body, timeout=10)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param
    assert param in err["message"]


def test_prompt_over_context(shared_worker):
    prompt = "hello " * 600
    count = requests.post(shared_worker.url + "/tokenize", json={"prompt": prompt}, timeout=10).json()["count"]
    r = requests.post(shared_worker.url + "/generate", json={"prompt": prompt}, timeout=10)
    assert r.status_code == 400
    msg = r.json()["error"]["message"]
    assert "512" in msg and str(count) in msg


def test_malformed_and_unknown(shared_worker):
    r = requests.post(shared_worker.url + "/generate", data=b"{not json", timeout=10)
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    assert requests.get(shared_worker.url + "/nope", timeout=5).status_code == 404
    assert requests.get(shared_worker.url + "/generate", timeout=5).status_code == 405


def run_worker_expecting_failure(path, *extra):
    device = [] if "--device" in extra else ["--device", "cpu"]
    p = subprocess.run([binary("sluice-worker"), "--model-path", str(path), *device, "--no-register",
                        "--port", str(free_port()), *extra], capture_output=True, timeout=30)
    assert p.returncode != 0
    return p.stderr.decode(errors="replace")


def test_bad_model_files(tmp_path):
    stories = need_stories()
    gguf = (stories / "stories260K.gguf").read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(gguf[: len(gguf) // 3])
    (tmp_path / "magic.gguf").write_bytes(b"XXXX" + gguf[4:])
    assert "trunc.gguf" in run_worker_expecting_failure(tmp_path / "trunc.gguf")
    assert "magic.gguf" in run_worker_expecting_failure(tmp_path / "magic.gguf")
    assert "missing" in run_worker_expecting_failure(tmp_path / "missing")
    assert "--device" in run_worker_expecting_failure(stories / "hf", "--device", "tpu")


def test_registers_and_heartbeats(procs):
    ctl = start_controller(procs, "--heartbeat-expiration", "2")
    w = start_worker(procs, None, "--model-names", "stories,tiny", "--heartbeat-interval", "0.3", controller=ctl.url)
    deadline = time.time() + 10
    models = []
    while time.time() < deadline:
        models = requests.post(ctl.url + "/list_models", timeout=5).json()["models"]
        if models:
            break
        time.sleep(0.1)
    assert sorted(models) == ["stories", "tiny"]
    # Alive past the expiration: heartbeats keep it registered.
    time.sleep(2.5)
    addr = requests.post(ctl.url + "/get_worker_address", json={"model": "tiny"}, timeout=5).json()["address"]
    assert addr == w.url


def test_cuda_without_a_gpu_is_refused_clearly():
    import shutil
    if shutil.which("nvidia-smi") and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        pytest.skip("this machine has a GPU")
    err = run_worker_expecting_failure(need_stories() / "hf", "--device", "cuda")
    assert "GPU" in err or "CUDA" in err, err


def test_fastchat_errors_are_frames(procs):
    """FastChat's clients read error_code from NUL-delimited frames and ignore the status."""
    w = start_worker(procs, None, "--limit-worker-concurrency", "1")
    s = socket.create_connection(("127.0.0.1", w.port), timeout=10)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "ignore_eos": True})
    s.sendall(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    assert b"200" in s.recv(4096)
    r = requests.post(w.url + "/worker_generate_stream", json={"prompt": "x", "max_new_tokens": 4}, timeout=10)
    frame = json.loads(r.content.split(b"\0")[0])
    assert r.status_code == 200 and frame["error_code"] == 42903 and "limit" in frame["text"]
    r = requests.post(w.url + "/generate", json={"prompt": "x"}, timeout=10)
    assert r.status_code == 503 and r.headers.get("Retry-After")
    s.close()
    deadline = time.time() + 10
    while metric(w.url, "sluice_worker_requests_active") > 0 and time.time() < deadline:
        time.sleep(0.02)
    r = requests.post(w.url + "/worker_generate", json={"prompt": "hello " * 600}, timeout=10)
    assert r.status_code == 200 and r.json()["error_code"] == 40303
    r = requests.post(w.url + "/health", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "GET"
