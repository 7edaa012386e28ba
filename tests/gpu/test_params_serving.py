"""What the CUDA backend does not compute yet is refused, never ignored: through the real worker
on the GPU, logit_bias, min_tokens (when it has something to hold back), prompt_logprobs, echo
with logprobs and embeddings each answer 400 naming the field (FastChat's embeddings endpoint
its error frame), while a plain generation still runs. Llama-3-8B's shape with random weights.

Needs a GPU, the worker binary (SLUICE_BIN, default bin/) and Llama 3.1's tokenizer. Skips
otherwise."""
import http.client
import json

import pytest

from serving import have_gpu, tokenizer_dir, worker


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    return r.status, data


def test_cuda_refuses_what_it_does_not_compute():
    if not have_gpu():
        pytest.skip("no GPU")
    tok = tokenizer_dir()
    base = {"prompt_token_ids": [1000, 2000, 3000], "max_tokens": 4, "temperature": 0}
    with worker(tok) as port:
        for extra, param in [({"logit_bias": {"5": 1}}, "logit_bias"), ({"min_tokens": 2}, "min_tokens"),
                             ({"prompt_logprobs": 1}, "prompt_logprobs"), ({"echo": True, "logprobs": 0}, "echo")]:
            status, data = post(port, "/generate", {**base, **extra})
            assert status == 400, (extra, data)
            err = json.loads(data)["error"]
            assert err["param"] == param and "cuda backend" in err["message"], err
        status, data = post(port, "/embed", {"input": "hello"})
        assert status == 400 and json.loads(data)["error"]["param"] == "model", data
        assert "embeddings are not supported on the cuda backend" in json.loads(data)["error"]["message"]
        status, data = post(port, "/worker_get_embeddings", {"input": ["hello"]})
        assert status == 200 and json.loads(data)["error_code"] == 40001, data
        # What asks nothing of the sampler still runs: min_tokens with nothing to hold back, an
        # empty logit_bias, echo without logprobs, and a plain generation.
        for extra in [{"min_tokens": 2, "ignore_eos": True}, {"logit_bias": {}}, {"echo": True}, {}]:
            status, data = post(port, "/generate", {**base, **extra})
            assert status == 200, (extra, data)
            frames = [json.loads(line) for line in data.splitlines() if line.strip()]
            assert frames[-1]["finish_reason"] == "length", (extra, frames[-1])
