"""A quantized GGUF model on the CPU worker: SmolLM2-135M-Instruct Q4_1 (`make fetch-smollm2`; fetched
here when missing, the tests skip saying why when it cannot be) kept in its blocks.

- Greedy continuations equal Hugging Face transformers' on the same file (which dequantizes it to
  float32), and the first token's logprobs are within 1e-3 of its logits' log-softmax
  (tests/fixtures/smollm2/hf_reference.json, made by make_hf_reference.py beside it).
- The worker's resident memory, less the KV cache it logs, is within 1.3x the file's size, once the
  fixed cost of any worker process is taken off (measured on a worker of a 1 MB model: the binary,
  its libraries and the CUDA libraries' initialization, about 170 MB whatever the model)."""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import REPO, binary, need_stories, start_worker

REFERENCE = REPO / "tests" / "fixtures" / "smollm2" / "hf_reference.json"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    cache = Path(os.environ.get("SLUICE_MODEL_CACHE") or Path.home() / ".cache" / "sluice")
    path = cache / NAME
    if not path.exists():
        try:
            run = subprocess.run(["make", "-s", "-C", str(REPO), "fetch-smollm2"], capture_output=True, text=True,
                                 timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"{NAME} is not in {cache} and `make fetch-smollm2` failed: {e}")
        if run.returncode != 0 or not path.exists():
            pytest.skip(f"{NAME} is not in {cache} and `make fetch-smollm2` could not fetch it: "
                        f"{(run.stderr or run.stdout).strip()[-500:]}")
    return path


def generate(worker, body):
    r = requests.post(worker.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    frames = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    ids = [t for f in frames for t in f.get("token_ids") or []]
    logprobs = [lp for f in frames for lp in f.get("logprobs") or []]
    assert frames[-1]["finish_reason"] == "length", frames[-1]
    return ids, logprobs


def logged_bytes(worker, what):
    # "KV cache float32 11796480 bytes": the cache's dtype may stand before its bytes.
    m = re.search(what + r"(?: [a-z0-9_]+)? (\d+) bytes", worker.output())
    assert m, f"the worker's log does not say its {what} bytes:\n{worker.output()}"
    return int(m.group(1))


def rss_bytes(worker):
    status = Path(f"/proc/{worker.p.pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def test_greedy_equals_transformers(procs, smollm2):
    ref = json.loads(REFERENCE.read_text())
    assert ref["model"] == NAME
    worker = start_worker(procs, smollm2, "--kv-cache-tokens", "1024")
    for p in ref["prompts"]:
        ids, logprobs = generate(worker, {"prompt_token_ids": p["prompt_ids"], "max_tokens": ref["gen"],
                                          "temperature": 0, "ignore_eos": True, "logprobs": 20})
        assert ids == p["greedy_ids"], f"{p['text']!r}: {ids} != Hugging Face's {p['greedy_ids']}"
        hf = {i: v - p["logsumexp"] for i, v in zip(p["top_ids"], p["top_logits"])}
        top = logprobs[0]["top_logprobs"]
        assert [t["token_id"] for t in top] == p["top_ids"][:20], p["text"]
        worst = max(abs(t["logprob"] - hf[t["token_id"]]) for t in top)
        assert worst < 1e-3, f"{p['text']!r}: first-token logprobs differ from Hugging Face's by {worst}"


def test_resident_memory_within_1_3x_the_file(procs, smollm2):
    if b"__asan_init" in Path(binary("sluice-worker")).read_bytes():
        pytest.skip("under AddressSanitizer, resident memory (shadow memory, redzones, quarantine) says nothing "
                    "about how the weights are held")
    flags = ["--kv-cache-tokens", "256", "--max-num-seqs", "4"]
    body = {"prompt_token_ids": [504, 3575, 282, 4649, 314], "max_tokens": 16, "temperature": 0,
            "ignore_eos": True}
    # The same worker on a 1 MB model: what any worker process costs.
    base = start_worker(procs, need_stories() / "stories260K.gguf", *flags)
    generate(base, body | {"prompt_token_ids": [1, 403, 407]})
    base_rss = rss_bytes(base)
    base.kill()

    worker = start_worker(procs, smollm2, *flags)
    generate(worker, body)
    rss, kv = rss_bytes(worker), logged_bytes(worker, "KV cache")
    weights = logged_bytes(worker, "weights")
    size = smollm2.stat().st_size
    model_rss = rss - kv - base_rss
    print(f"RSS {rss / 2**20:.1f} MiB, KV cache {kv / 2**20:.1f} MiB, a worker of a 1 MB model "
          f"{base_rss / 2**20:.1f} MiB: the model takes {model_rss / 2**20:.1f} MiB for a "
          f"{size / 2**20:.1f} MiB file ({model_rss / size:.2f}x); weights logged {weights / 2**20:.1f} MiB")
    assert weights <= size, f"weights of {weights} bytes for a file of {size}: some were expanded"
    assert model_rss <= 1.3 * size, (f"resident {rss} bytes less KV {kv} and the process's own {base_rss} "
                                     f"is {model_rss / size:.2f}x the file's {size} bytes")
