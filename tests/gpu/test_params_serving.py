"""Structured output, logit_bias, min_tokens, prompt logprobs and embeddings through the real
worker on the GPU (the CUDA backend's token masks, biases, suppressed ids, prompt logprobs and
hidden states), end to end over the worker's native /generate and /embed.

1. Llama-3-8B's shape with random weights: json_schema, regex and choice outputs parse, validate
   and match, drawn and greedy, 24 constrained requests at once beside 8 free ones (so masked
   and free rows share batches and decode steps replay CUDA graphs); logit_bias forces and bans;
   min_tokens holds EOS back; prompt_logprobs come in vLLM's shape; embeddings are unit vectors.
2. A tiny Llama-3-vocabulary model (tests/bench/configs/tiny-llama3-8k, random weights) on the
   CPU and the CUDA backend: greedy structured outputs, biased and min_tokens outputs, prompt
   logprobs and embeddings agree. The device runs bf16 weights and activations where the CPU runs
   fp32, so numbers agree within tolerances, and greedy picks can differ only where two tokens'
   logits nearly tie: each case says which.

Random-weight models rarely close a JSON object while whitespace tokens are allowed (they are
hundreds of the vocabulary), so the JSON requests also bias Llama 3's whitespace-only tokens by
-100: a logit bias and a token mask on the same rows.

Needs a GPU, the worker binary (SLUICE_BIN, default bin/) and Llama 3.1's tokenizer. Skips
otherwise."""
import http.client
import json
import math
import os
import re

import pytest

from serving import REPO, VOCAB, at_once, have_gpu, tokenizer_dir, worker

TINY = os.path.join(REPO, "tests", "bench", "configs", "tiny-llama3-8k")
EOS = 128001

SCHEMA = {"type": "object",
          "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]},
                         "name": {"type": "string", "maxLength": 6}},
          "required": ["ok", "color", "name"], "additionalProperties": False}
REGEX = r"[a-z]{2,6}-[0-9]{2}"
CHOICES = ["alpha", "bravo", "charlie delta"]


def post(port, path, body):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read().decode()
    conn.close()
    return r.status, data


def gen(port, body):
    """One /generate: (text, token ids, finish_reason, the frame with prompt_logprobs or None)."""
    status, data = post(port, "/generate", body)
    assert status == 200, (body, data)
    text, ids, finish, plp = "", [], None, None
    for line in data.splitlines():
        if not line.strip():
            continue
        frame = json.loads(line)
        assert frame.get("finish_reason") != "error", (body, frame)
        text += frame["text"]
        ids += frame["token_ids"]
        finish = frame["finish_reason"] or finish
        if "prompt_logprobs" in frame:
            plp = frame["prompt_logprobs"]
    return text, ids, finish, plp


def whitespace_ids(tok):
    vocab = json.load(open(os.path.join(tok, "tokenizer.json")))["model"]["vocab"]
    return [i for t, i in vocab.items() if t and all(c in "\u0120\u010a\u0109" for c in t)]


def valid(doc):
    """SCHEMA's rules, checked by hand (the GPU machine has no jsonschema)."""
    return (isinstance(doc, dict) and set(doc) == {"ok", "color", "name"} and isinstance(doc["ok"], bool)
            and doc["color"] in ("red", "green", "blue") and isinstance(doc["name"], str) and len(doc["name"]) <= 6)


def structured_bodies(ws, temperature, seed):
    no_ws = {str(i): -100 for i in ws}
    base = {"prompt": "Answer:", "max_tokens": 200, "temperature": temperature, "seed": seed}
    return {"json": {**base, "response_format": {"type": "json_schema",
                                                  "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
                     "logit_bias": no_ws},
            "regex": {**base, "guided_regex": REGEX},
            "choice": {**base, "guided_choice": CHOICES}}


def check_structured(kind, text, finish):
    """Empty when the output is right; else why not."""
    if kind == "json":
        if finish != "stop":
            return f"json ended by {finish}: {text!r}"
        try:
            doc = json.loads(text)
        except ValueError as e:
            return f"json does not parse ({e}): {text!r}"
        return "" if valid(doc) else f"json does not validate: {text!r}"
    if kind == "regex":
        return "" if finish == "stop" and re.fullmatch(REGEX, text) else f"regex: {text!r} ({finish})"
    return "" if finish == "stop" and text in CHOICES else f"choice: {text!r} ({finish})"


def test_cuda_structured_bias_min_tokens_prompt_logprobs_embeddings():
    if not have_gpu():
        pytest.skip("no GPU")
    tok = tokenizer_dir()
    ws = whitespace_ids(tok)
    with worker(tok) as port:
        # Constrained requests, drawn and greedy, beside free ones: all at once.
        calls, kinds = [], []
        for seed in range(8):
            for kind, body in structured_bodies(ws, 1.0 if seed else 0.0, seed).items():
                calls.append(lambda b=body: gen(port, b))
                kinds.append(kind)
        for seed in range(8):
            calls.append(lambda s=seed: gen(port, {"prompt_token_ids": [1000 + s, 2000, 3000], "max_tokens": 32,
                                                   "temperature": 0.8, "seed": s, "ignore_eos": True}))
            kinds.append("free")
        bad = []
        for kind, (text, ids, finish, _) in zip(kinds, at_once(calls)):
            if kind == "free":
                if finish != "length" or len(ids) != 32:
                    bad.append(f"free: {len(ids)} tokens, {finish}")
            elif check_structured(kind, text, finish):
                bad.append(check_structured(kind, text, finish))
        assert not bad, "structured outputs on the CUDA backend that are wrong:\n" + "\n".join(bad)

        base = {"prompt_token_ids": [1000, 2000, 3000], "max_tokens": 6, "temperature": 0}
        # logit_bias: +100 forces a token (drawn too), -100 bans the greedy one.
        _, ids, _, _ = gen(port, {**base, "temperature": 1.0, "seed": 3, "logit_bias": {"300": 100},
                                  "ignore_eos": True})
        assert ids == [300] * 6, f"logit_bias +100 on 300 gave {ids}"
        _, greedy, _, _ = gen(port, {**base, "max_tokens": 1, "ignore_eos": True})
        _, ids, _, _ = gen(port, {**base, "max_tokens": 1, "ignore_eos": True, "logit_bias": {str(greedy[0]): -100}})
        assert ids != greedy, f"logit_bias -100 on the greedy token {greedy[0]} still gave it"
        # min_tokens: EOS biased to certainty ends at once; min_tokens 5 holds it back 5 tokens.
        _, ids, finish, _ = gen(port, {**base, "max_tokens": 20, "logit_bias": {str(EOS): 100}})
        assert finish == "stop" and len(ids) <= 1, (ids, finish)
        _, ids, finish, _ = gen(port, {**base, "max_tokens": 20, "logit_bias": {str(EOS): 100}, "min_tokens": 5})
        assert finish == "stop" and len(ids) == 6 and EOS not in ids[:5], f"min_tokens 5: {ids} ({finish})"
        # prompt_logprobs: the first null, then each prompt token with its rank and top 2.
        prompt = [1000, 2000, 3000, 4000, 5000]
        _, _, _, plp = gen(port, {"prompt_token_ids": prompt, "max_tokens": 2, "temperature": 0,
                                  "prompt_logprobs": 2})
        assert plp is not None and len(plp) == len(prompt), plp
        assert plp[0]["logprob"] is None
        for i, e in enumerate(plp[1:], 1):
            assert e["logprob"] <= 0 and e["rank"] >= 1 and len(e["top_logprobs"]) == 2, e
            assert e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-6, e
        # Embeddings: one unit vector of the hidden size per input.
        status, data = post(port, "/embed", {"input": ["hello world", [1000, 2000, 3000]]})
        assert status == 200, data
        vecs = [d["embedding"] for d in json.loads(data)["data"]]
        assert len(vecs) == 2 and all(len(v) == 4096 for v in vecs), [len(v) for v in vecs]
        assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-3 for v in vecs)


def cosine(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def run_tiny(port, ws):
    """What the CPU and the CUDA worker are compared on."""
    out = {}
    for kind, body in structured_bodies(ws, 0.0, 0).items():
        text, _, finish, _ = gen(port, body)
        out[kind] = (text, finish)
    base = {"prompt_token_ids": [1000, 2000, 3000], "temperature": 0}
    out["bias"] = gen(port, {**base, "max_tokens": 4, "logit_bias": {"300": 100}, "ignore_eos": True})[1]
    out["min_tokens"] = gen(port, {**base, "max_tokens": 20, "logit_bias": {str(EOS): 100}, "min_tokens": 3})[1]
    prompt = [128000, 1000, 2000, 3000, 4000, 5000, 6000, 7000]
    out["plp"] = gen(port, {"prompt_token_ids": prompt, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 3})[3]
    status, data = post(port, "/embed", {"input": [prompt, "a longer sentence to embed, for the mean"]})
    assert status == 200, data
    out["embed"] = [d["embedding"] for d in json.loads(data)["data"]]
    return out


def test_cuda_agrees_with_cpu_on_a_tiny_model():
    if not have_gpu():
        pytest.skip("no GPU")
    tok = tokenizer_dir()
    ws = whitespace_ids(tok)
    with worker(tok, model=TINY, device="cpu", max_num_seqs=8) as port:
        cpu = run_tiny(port, ws)
    with worker(tok, model=TINY, max_num_seqs=8) as port:
        gpu = run_tiny(port, ws)
    for kind in ("json", "regex", "choice"):
        assert not check_structured(kind, *gpu[kind]), ("cuda", check_structured(kind, *gpu[kind]))
        assert not check_structured(kind, *cpu[kind]), ("cpu", check_structured(kind, *cpu[kind]))
    # Forced by the bias and by min_tokens: no near ties there.
    assert gpu["bias"] == cpu["bias"] == [300] * 4, (gpu["bias"], cpu["bias"])
    assert len(gpu["min_tokens"]) == len(cpu["min_tokens"]) == 4 and gpu["min_tokens"][-1] == EOS, \
        (gpu["min_tokens"], cpu["min_tokens"])
    # Prompt logprobs within 0.05 (bf16 against fp32), position by position.
    assert len(gpu["plp"]) == len(cpu["plp"]) == 8
    worst = max(abs(g["logprob"] - c["logprob"]) for g, c in zip(gpu["plp"][1:], cpu["plp"][1:]))
    worst_top = max(abs(g["top_logprobs"][0]["logprob"] - c["top_logprobs"][0]["logprob"])
                    for g, c in zip(gpu["plp"][1:], cpu["plp"][1:]))
    assert worst < 0.05 and worst_top < 0.05, f"prompt logprobs differ by up to {worst} (best alternative {worst_top})"
    # Embeddings (last-token or mean, as the worker's --pooling default says) point the same way.
    sims = [cosine(g, c) for g, c in zip(gpu["embed"], cpu["embed"])]
    assert all(s > 0.999 for s in sims), f"embedding cosine similarities CUDA vs CPU: {sims}"
    # Greedy structured outputs: the same text unless two candidates' logits nearly tie, which
    # bf16 may break the other way; say which differ so a reader can judge.
    same = [k for k in ("json", "regex", "choice") if gpu[k] == cpu[k]]
    assert len(same) >= 2, f"greedy structured outputs CUDA vs CPU: {[(k, gpu[k], cpu[k]) for k in ('json', 'regex', 'choice')]}"
