"""Greedy output independent of the batch, through the real worker on a GPU: 64 requests sent at
once give, token for token, what each gives alone (sent one after another), under
--deterministic. Llama-3-8B's shape with random weights (--load-format dummy), so the products
run at their real sizes. The same run without the flag is reported, not asserted: there the
products' kernels follow the batch size (see the README's "Deterministic mode").

Needs a GPU, the worker binary (SLUICE_BIN, default bin/) and Llama 3.1's tokenizer
($SLUICE_TEST_DATA/tokenizers/llama3_1, or .models/llama3_1). Skips otherwise."""
import random

import pytest

from serving import VOCAB, at_once, generate, have_gpu, tokenizer_dir, worker

N_REQUESTS = 64
MAX_TOKENS = 32


def run_worker(tok, deterministic, prompts):
    """Each prompt's greedy answer sent alone (one after another), then all sent at once."""
    with worker(tok, *(["--deterministic"] if deterministic else []), max_num_seqs=N_REQUESTS) as port:
        alone = [generate(port, pr, MAX_TOKENS) for pr in prompts]
        together = at_once([lambda pr=pr: generate(port, pr, MAX_TOKENS) for pr in prompts])
        return alone, together


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
