"""--tensor-parallel-size 1 on CUDA through the real worker: the NCCL communicator of one GPU
is created and its all-reduces and logits gather run in every step (no-ops), and the answers
equal a worker's without the flag, request by request (each alone in its steps). Sizes above 1
on CUDA are refused at start with a message. Llama-3-8B's shape with random weights.

Needs a GPU, the worker binary (SLUICE_BIN, default bin/) and Llama 3.1's tokenizer; skips
otherwise, and when the worker reports no NCCL."""
import os
import random
import subprocess

import pytest

from serving import BIN, CONFIG, VOCAB, generate, have_gpu, tokenizer_dir, worker


def answers(port):
    rng = random.Random(7)
    prompts = [[rng.randrange(1000, VOCAB - 1000) for _ in range(n)] for n in (5, 40, 300, 17)]
    return [generate(port, p, 32) for p in prompts]


@pytest.mark.skipif(not have_gpu(), reason="no GPU")
def test_one_rank_through_nccl_equals_no_communicator():
    tok = tokenizer_dir()
    with worker(tok) as port:
        plain = answers(port)
    try:
        with worker(tok, "--tensor-parallel-size", "1") as port:
            tp = answers(port)
    except AssertionError as e:
        if "without NCCL" in str(e) or "cannot open the NCCL library" in str(e):
            pytest.skip(str(e).splitlines()[-1])
        raise
    assert tp == plain


@pytest.mark.skipif(not have_gpu(), reason="no GPU")
def test_more_ranks_than_cuda_shards_are_refused():
    p = subprocess.run([os.path.join(BIN, "sluice-worker"), "--model-path", CONFIG, "--load-format", "dummy",
                        "--tokenizer", tokenizer_dir(), "--device", "cuda", "--num-gpus", "2", "--no-register"],
                       capture_output=True, timeout=120)
    assert p.returncode != 0
    assert "--device cpu only" in p.stderr.decode(), p.stderr.decode()


@pytest.mark.skipif(not have_gpu(), reason="no GPU")
def test_an_nccl_library_that_cannot_be_opened_is_named():
    p = subprocess.run([os.path.join(BIN, "sluice-worker"), "--model-path", CONFIG, "--load-format", "dummy",
                        "--tokenizer", tokenizer_dir(), "--device", "cuda", "--tensor-parallel-size", "1",
                        "--nccl-library", "/nonexistent/libnccl.so.2", "--no-register", "--no-cuda-warmup"],
                       capture_output=True, timeout=180)
    err = p.stderr.decode()
    if "without NCCL" in err:
        pytest.skip("this worker was built without NCCL")
    assert p.returncode != 0
    assert "cannot open the NCCL library" in err and "/nonexistent/libnccl.so.2" in err, err
