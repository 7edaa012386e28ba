#!/usr/bin/env python3
"""The references sluice's GPU decode speed is measured against, on the same GPU and shape:

1. Hugging Face transformers' generate() on random bf16 weights of a config.json (greedy,
   EOS ignored), decode tokens/s at each batch size;
2. the bandwidth roofline: a decode step must read every weight once, so batch-1 decode can
   go no faster than copy bandwidth / weight bytes. Bandwidth is measured here with a large
   device-to-device copy (bytes read + bytes written over the time).

Runs on a machine with torch and a GPU (the lent device), not in CI."""
import argparse
import json
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def copy_bandwidth(gib=4, reps=20):
    n = gib * (1 << 30) // 2
    a = torch.empty(n, dtype=torch.bfloat16, device="cuda").uniform_()
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    times.sort()
    return 2 * a.numel() * 2 / times[len(times) // 2]


def weight_bytes_per_step(model):
    """Every parameter is read once per decode step, except the embedding table, of which a
    step reads only the rows of its tokens (when lm_head is tied, the table is read whole
    as lm_head anyway)."""
    total = 0
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    for p in model.parameters():
        if p is emb and p is not out:
            continue
        total += p.numel() * p.element_size()
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="folder with config.json")
    ap.add_argument("--batch-sizes", default="1,8,64,256")
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--json")
    args = ap.parse_args()

    bw = copy_bandwidth()
    cfg = AutoConfig.from_pretrained(args.config)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    model.eval()
    for p in model.parameters():
        p.data.uniform_(-0.02, 0.02)
    wbytes = weight_bytes_per_step(model)
    roofline = bw / wbytes
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; weight bytes per step {wbytes / 1e9:.2f} GB; "
          f"batch-1 roofline {roofline:.1f} tok/s")
    results = {"bandwidth_Bps": bw, "weight_bytes": wbytes, "roofline_tok_s": roofline, "hf": {},
               "hf_prefill_s": {}}
    for b in [int(x) for x in args.batch_sizes.split(",")]:
        ids = torch.randint(3, cfg.vocab_size, (b, args.input_len), device="cuda")
        kw = dict(do_sample=False, max_new_tokens=args.output_len, min_new_tokens=args.output_len,
                  pad_token_id=0, attention_mask=torch.ones_like(ids))
        try:
            with torch.no_grad():
                model.generate(ids, **dict(kw, max_new_tokens=2, min_new_tokens=2))  # warm up
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.generate(ids[:, :], **dict(kw, max_new_tokens=1, min_new_tokens=1))
                torch.cuda.synchronize()
                prefill = time.perf_counter() - t0
                t0 = time.perf_counter()
                out = model.generate(ids, **kw)
                torch.cuda.synchronize()
                total = time.perf_counter() - t0
        except torch.OutOfMemoryError:
            print(f"hf batch {b}: out of memory")
            torch.cuda.empty_cache()
            continue
        gen = out.shape[1] - args.input_len
        decode_tok_s = b * (gen - 1) / max(total - prefill, 1e-9)
        results["hf"][b] = decode_tok_s
        results["hf_prefill_s"][b] = prefill
        print(f"hf batch {b:4d}: decode {decode_tok_s:9.1f} tok/s  (prefill {prefill:.3f} s, total {total:.2f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
