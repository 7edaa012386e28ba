"""Greedy output independent of the batch, through the real worker on a GPU: 64 requests sent at
once give, token for token, what each gives alone (sent one after another), under
--deterministic. Llama-3-8B's shape with random weights (--load-format dummy), so the products
run at their real sizes. The same run without the flag is reported, not asserted: there the
products' kernels follow the batch size (see the README's "Deterministic mode").

Needs a GPU, the worker binary (SLUICE_BIN, default bin/) and Llama 3.1's tokenizer
($SLUICE_TEST_DATA/tokenizers/llama3_1, or .models/llama3_1). Skips otherwise."""
import http.client
import json
import os
import random
import socket
import subprocess
import threading
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("SLUICE_BIN", os.path.join(REPO, "bin"))
DATA = os.environ.get("SLUICE_TEST_DATA", os.path.join(os.path.dirname(REPO), "shared"))
CONFIG = os.path.join(REPO, "tests", "bench", "configs", "llama-3-8b")
N_REQUESTS = 64
MAX_TOKENS = 32
VOCAB = 128256


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


def generate(port, prompt_ids):
    """Token ids of one greedy generation over the worker's native stream."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = json.dumps({"prompt_token_ids": prompt_ids, "max_tokens": MAX_TOKENS, "temperature": 0,
                       "ignore_eos": True})
    conn.request("POST", "/generate", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    assert r.status == 200, data
    ids = []
    for line in data.splitlines():
        if line.strip():
            frame = json.loads(line)
            assert frame.get("finish_reason") != "error", frame
            ids += frame["token_ids"]
    return ids


def run_worker(tok, deterministic, prompts):
    port = free_port()
    args = [os.path.join(BIN, "sluice-worker"), "--model-path", CONFIG, "--load-format", "dummy", "--tokenizer", tok,
            "--device", "cuda", "--port", str(port), "--no-register", "--max-num-seqs", str(N_REQUESTS),
            "--log-level", "warn"]
    if deterministic:
        args.append("--deterministic")
    log = open(f"/tmp/sluice-invariance-{port}.log", "wb")
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while True:
            assert p.poll() is None, open(log.name).read()
            assert time.time() < deadline, "the worker did not come up in 240 s"
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        alone = [generate(port, pr) for pr in prompts]
        together = [None] * len(prompts)

        def one(i):
            together[i] = generate(port, prompts[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        return alone, together
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(not have_gpu(), reason="no GPU")
def test_concurrent_greedy_equals_sequential():
    tok = tokenizer_dir()
    rng = random.Random(7)
    prompts = [[rng.randrange(1000, VOCAB - 1000) for _ in range(rng.randrange(8, 300))] for _ in range(N_REQUESTS)]
    alone, together = run_worker(tok, False, prompts)
    same = sum(a == b for a, b in zip(alone, together))
    print(f"batch invariance, default mode: {same} of {N_REQUESTS} concurrent greedy answers equal their "
          f"answer alone")
    alone, together = run_worker(tok, True, prompts)
    same = sum(a == b for a, b in zip(alone, together))
    print(f"batch invariance, --deterministic: {same} of {N_REQUESTS} concurrent greedy answers equal their "
          f"answer alone")
    assert all(len(a) == MAX_TOKENS for a in alone)
    assert same == N_REQUESTS
