"""What the GPU tests that go through the real worker share (test_batch_invariance_serving.py,
test_prefix_cache_serving.py): a CUDA worker on Llama-3-8B's shape with random weights, started
on a free port and always killed, its native /generate stream and its /metrics. Standard library
only, like the other GPU tests (the GPU machine's python3 has pytest, not requests)."""
import contextlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SLUICE_BIN", os.path.join(REPO, "bin"))
DATA = os.environ.get("SLUICE_TEST_DATA", os.path.join(os.path.dirname(REPO), "shared"))
CONFIG = os.path.join(REPO, "tests", "bench", "configs", "llama-3-8b")
VOCAB = 128256
START_TIMEOUT = 240


def tokenizer_dir():
    for d in (os.path.join(DATA, "tokenizers", "llama3_1"), os.path.join(REPO, ".models", "llama3_1")):
        if os.path.exists(os.path.join(d, "tokenizer.json")):
            return d
    pytest.skip("Llama 3.1's tokenizer not found (SLUICE_TEST_DATA/tokenizers/llama3_1)")


def have_gpu():
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def worker(tok, *flags, model=CONFIG, device="cuda", max_num_seqs=64):
    """A worker serving model's shape with random weights, on its own port, up once /health
    answers 200 (within START_TIMEOUT seconds); yields the port and kills the worker after."""
    port = free_port()
    args = [os.path.join(BIN, "sluice-worker"), "--model-path", model, "--load-format", "dummy", "--tokenizer", tok,
            "--device", device, "--port", str(port), "--no-register", "--max-num-seqs", str(max_num_seqs),
            "--log-level", "warn", *flags]
    log = open(f"/tmp/sluice-gpu-serving-{port}.log", "wb")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + START_TIMEOUT
        while True:
            assert p.poll() is None, open(log.name).read()
            assert time.time() < deadline, f"the worker did not come up in {START_TIMEOUT} s"
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        yield port
    finally:
        p.kill()
        p.wait()
        log.close()


def generate(port, ids, max_tokens, temperature=0.0, seed=None):
    """The token ids of one generation over the worker's native stream (EOS ignored)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {"prompt_token_ids": ids, "max_tokens": max_tokens, "temperature": temperature, "ignore_eos": True}
    if seed is not None:
        body["seed"] = seed
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    assert r.status == 200, data
    out = []
    for line in data.splitlines():
        if line.strip():
            frame = json.loads(line)
            assert frame.get("finish_reason") != "error", frame
            out += frame["token_ids"]
    return out


def metric(port, name):
    """The value of an unlabelled series on the worker's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return float(next(l.split()[1] for l in text.splitlines() if l.startswith(name + " ")))


def at_once(calls):
    """Runs every call at the same time, each on its own thread; their results in order."""
    out = [None] * len(calls)

    def one(i):
        out[i] = calls[i]()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return out
