"""The real sluice-worker with --tensor-parallel-size on the CPU: one worker of N rank threads,
registered once, answering Hugging Face's greedy tokens through the gateway; --num-gpus as
FastChat's alias; SmolLM2's Q4_1 GGUF over three ranks, in its blocks, answering as one rank does;
sizes that do not shard, and contradictions, refused with clear messages."""
import json
import subprocess
import time

import pytest
import requests

from conftest import binary, free_port, need_stories, reference, start_controller, start_gateway, start_worker
from test_quant_smollm2 import smollm2  # noqa: F401 (the fixture)


def generate(worker, **body):
    r = requests.post(worker.url + "/generate", json=body, stream=True, timeout=60)
    assert r.status_code == 200, r.text
    frames = [json.loads(line) for line in r.iter_lines() if line]
    return [i for f in frames for i in f["token_ids"]], "".join(f["text"] for f in frames)


def refused(*extra):
    p = subprocess.run([binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--no-register",
                        "--port", str(free_port()), *extra], capture_output=True, timeout=30)
    assert p.returncode != 0
    return p.stderr.decode(errors="replace")


def test_two_ranks_register_once_and_complete_through_the_gateway(procs):
    ctl = start_controller(procs)
    w = start_worker(procs, None, "--tensor-parallel-size", "2", "--threads", "2", "--model-names", "stories",
                     controller=ctl.url)
    deadline = time.time() + 10
    while requests.post(ctl.url + "/list_models", timeout=5).json()["models"] != ["stories"]:
        assert time.time() < deadline, "the worker never registered"
        time.sleep(0.05)
    gw = start_gateway(procs, ctl.url)
    ref = reference()["prompts"]
    for prompt, expected in ref.items():
        ids, text = generate(w, prompt=prompt, max_tokens=64, temperature=0)
        assert ids == expected["greedy_ids"], prompt
    prompt, expected = next(iter(ref.items()))
    r = requests.post(gw.url + "/v1/completions", timeout=60,
                      json={"model": "stories", "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    assert expected["greedy_text"].startswith(r.json()["choices"][0]["text"])
    workers = requests.get(ctl.url + "/workers", timeout=5).json()
    assert len(workers["workers"] if isinstance(workers, dict) else workers) == 1, workers
    log = w.output()
    assert "tensor parallel over 2 ranks" in log
    assert "tensor parallel rank 0 of 2" in log and "tensor parallel rank 1 of 2" in log and "bytes" in log


def test_num_gpus_is_the_alias_and_four_ranks_agree(procs):
    w = start_worker(procs, None, "--num-gpus", "4", "--threads", "2")
    expected = reference()["prompts"]["Once upon a time"]
    ids, _ = generate(w, prompt="Once upon a time", max_tokens=64, temperature=0)
    assert ids == expected["greedy_ids"]
    assert "tensor parallel over 4 ranks" in w.output()


def test_help_lists_both_names():
    out = subprocess.run([binary("sluice-worker"), "--help"], capture_output=True, timeout=30).stdout.decode()
    assert "--tensor-parallel-size" in out and "--num-gpus" in out


@pytest.mark.parametrize("extra,says", [
    (["--device", "cpu", "--tensor-parallel-size", "8"], "does not divide intermediate_size 172"),
    (["--device", "cpu", "--tensor-parallel-size", "3"], "does not divide num_attention_heads 8"),
    (["--device", "cpu", "--num-gpus", "2", "--tensor-parallel-size", "4"], "disagree"),
    (["--device", "cpu", "--tensor-parallel-size", "0"], "--tensor-parallel-size"),
])
def test_sizes_that_cannot_run_are_refused(extra, says):
    err = refused(*extra)
    assert says in err, err


def test_cuda_ranks_without_their_gpus_are_refused():
    """One GPU per rank: where there are fewer (none here; one on the lent GPU machine) the worker
    exits naming what is missing, whichever build it is."""
    err = refused("--device", "cuda", "--tensor-parallel-size", "2")
    assert any(s in err for s in ("no GPU visible", "built without CUDA", "needs 2 GPUs")), err


def test_quantized_gguf_in_its_blocks_over_three_ranks(procs, smollm2):
    """SmolLM2's 9 heads, 3 KV heads and 1,536 channels split by 3; its Q4_1 rows stay in the
    file's blocks on each rank (o_proj's and down's columns cut on block boundaries)."""
    one = start_worker(procs, smollm2, "--threads", "2")
    three = start_worker(procs, smollm2, "--tensor-parallel-size", "3", "--threads", "2")
    for prompt in ("The capital of France is", "def fibonacci(n):"):
        body = {"prompt": prompt, "max_tokens": 12, "temperature": 0}
        assert generate(three, **body) == generate(one, **body), prompt
    log = three.output()
    assert "tensor parallel over 3 ranks" in log and "GGUF blocks read in place" in log
