"""Prefix caching on the GPU, through the real worker: with --deterministic (a sequence's
arithmetic does not depend on its batch or its chunks) the K/V a request maps from the cache are
bit for bit what it would have computed, so every output equals a cache-off worker's, and the
worker counts the hits. Llama-3-8B's shape with random weights (--load-format dummy).

The requests: 16 at once sharing a 1,000-token prefix with their own 32 tokens each; 8 copies
of one prompt at once, seeds apart (the n choices of one request: one prefill); two
conversations of three turns resending their history. The same run in the default mode is
reported, not asserted (its products' kernels follow the batch, so cached K/V may differ in the
last bits from recomputed ones).

Needs a GPU, the worker binary (SLUICE_BIN, default bin/) and Llama 3.1's tokenizer. Skips
otherwise."""
import random

import pytest

from serving import VOCAB, at_once, generate, have_gpu, metric, tokenizer_dir, worker

PREFIX = 1000


def workload(port, rng_seed=3):
    rng = random.Random(rng_seed)
    ids = lambda n: [rng.randrange(1000, VOCAB - 1000) for _ in range(n)]
    prefix = ids(PREFIX)
    shared = [prefix + ids(32) for _ in range(16)]
    outs = {"shared": at_once([lambda p=p: generate(port, p, 32) for p in shared])}
    twin = ids(700)
    outs["twins"] = at_once([lambda s=s: generate(port, twin, 24, 0.8, 100 + s) for s in range(8)])
    convs = []
    for c in range(2):
        history = ids(300)
        for turn in range(3):
            history += ids(40)
            history += generate(port, history, 24)
        convs.append(history)
    outs["conversations"] = convs
    return outs


def run_worker(tok, caching, deterministic):
    flags = (["--deterministic"] if deterministic else []) + ([] if caching else ["--no-enable-prefix-caching"])
    with worker(tok, *flags) as port:
        outs = workload(port)
        hits = metric(port, "sluice_worker_prefix_cache_hits_total")
        queries = metric(port, "sluice_worker_prefix_cache_queries_total")
        return outs, hits, queries


def same(a, b):
    return {k: sum(x == y for x, y in zip(a[k], b[k])) for k in a}


@pytest.mark.skipif(not have_gpu(), reason="no GPU")
def test_prefix_cache_gives_the_outputs_of_no_cache():
    tok = tokenizer_dir()
    off, _, _ = run_worker(tok, False, False)
    on, hits, queries = run_worker(tok, True, False)
    print(f"prefix cache, default mode: outputs equal with the cache on and off: {same(off, on)}; "
          f"hit rate {hits / queries:.3f}")

    off, off_hits, off_queries = run_worker(tok, False, True)
    on, hits, queries = run_worker(tok, True, True)
    print(f"prefix cache, --deterministic: outputs equal with the cache on and off: {same(off, on)}; "
          f"{hits:.0f} of {queries:.0f} prompt tokens from the cache")
    assert off_hits == 0 and off_queries == 0
    assert all(len(o) == 32 for o in on["shared"])
    assert on == off
    # At least: the prefix's 62 full blocks for 15 of the 16, the 7 twins' 43 blocks, and each
    # later turn's history (the first turn's 340 tokens and more).
    assert hits >= 15 * 62 * 16 + 7 * 43 * 16 + 4 * 21 * 16, hits
