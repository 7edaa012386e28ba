#!/usr/bin/env python3
"""Prefix caching, measured through the real worker's /generate: each benchmark runs on a worker
with the cache off (--no-enable-prefix-caching) and on one with it on (the default), started
here one after the other on the same device.

  repeat     time to first token of a --prefix-len prompt never seen (cold), then sent again
  shared     --num-requests requests at once sharing a --prefix-len prefix, each with its own
             --suffix-len tokens after it: end to end time and time to first token
  unshared   the same requests with nothing shared: what the cache costs where it cannot help
  multiturn  --conversations conversations at once, each --turns turns one after another; every
             turn resends the history (a --system-len system prompt all conversations share,
             then each earlier turn's --user-len user tokens and its answer) plus a new message

Prompts are random token ids (exact lengths, as tests/bench/serve_bench.py's), answers greedy and
exactly --output-len tokens (ignore_eos). Standard library only.

  CPU:  tests/bench/prefix_bench.py --device cpu --model-path tests/bench/configs/tiny-llama3-8k \\
          --load-format dummy --tokenizer ../shared/tokenizers/llama3_1
  GPU:  tests/bench/prefix_bench.py --device cuda --model-path tests/bench/configs/llama-3-8b \\
          --load-format dummy --tokenizer .models/llama3_1
"""
import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    """A sluice-worker on a free port; stop() always kills it."""

    def __init__(self, args, caching):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [os.path.join(args.bin, "sluice-worker"), "--model-path", args.model_path, "--device", args.device,
               "--port", str(self.port), "--no-register", "--log-level", "warn", "--max-num-seqs",
               str(max(args.num_requests, args.conversations))]
        if args.load_format:
            cmd += ["--load-format", args.load_format]
        if args.tokenizer:
            cmd += ["--tokenizer", args.tokenizer]
        if args.device == "cpu":
            # Room for every request's prompt uncached, so that both runs batch alike.
            need = (args.prefix_len + args.suffix_len + args.output_len + 16) * args.num_requests
            cmd += ["--kv-cache-tokens", str(max(need, 16384))]
        if not caching:
            cmd.append("--no-enable-prefix-caching")
        cmd += args.worker_arg
        self.log = open(f"/tmp/sluice-prefix-bench-{self.port}.log", "wb")
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + args.start_timeout
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"the worker exited: {open(self.log.name).read()[-3000:]}")
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the worker did not come up in {args.start_timeout} s")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)

    def metric(self, name):
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    def hit_rate(self, run):
        """run(), and the share of the prompt tokens it looked up that the cache held."""
        hits0 = self.metric("sluice_worker_prefix_cache_hits_total")
        q0 = self.metric("sluice_worker_prefix_cache_queries_total")
        out = run()
        hits = self.metric("sluice_worker_prefix_cache_hits_total") - hits0
        q = self.metric("sluice_worker_prefix_cache_queries_total") - q0
        return out, hits / q if q else 0.0

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait(timeout=30)
        self.log.close()


async def generate(port, ids, max_tokens):
    """One greedy generation over the native stream: (ttft s, e2e s, output ids)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps({"prompt_token_ids": ids, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True}).encode()
    start = time.perf_counter()
    writer.write(f"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        chunked |= line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower()
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {(await reader.read())[:300]!r}")
    ttft, out, buf = None, [], b""

    def frames(data):
        nonlocal ttft, buf
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if not line.strip():
                continue
            f = json.loads(line)
            if f.get("finish_reason") == "error":
                raise RuntimeError(f"generation failed: {f.get('error')}")
            if f["token_ids"] and ttft is None:
                ttft = time.perf_counter() - start
            out.extend(f["token_ids"])

    while True:
        if chunked:
            size = int((await reader.readline()).strip().split(b";")[0] or b"0", 16)
            if size == 0:
                break
            frames((await reader.readexactly(size + 2))[:-2])
        else:
            data = await reader.read(65536)
            if not data:
                break
            frames(data)
    writer.close()
    return ttft, time.perf_counter() - start, out


def run(coro):
    return asyncio.run(coro)


async def together(port, prompts, max_tokens):
    start = time.perf_counter()
    results = await asyncio.gather(*(generate(port, p, max_tokens) for p in prompts))
    return time.perf_counter() - start, results


def ms(values):
    return 1000 * statistics.median(values)


class Bench:
    def __init__(self, args):
        self.a = args
        self.rng = random.Random(args.seed)

    def ids(self, n):
        return [self.rng.randrange(self.a.min_token_id, self.a.vocab_size) for _ in range(n)]

    def inputs(self):
        """Every prompt, drawn once so that both runs send the same."""
        a = self.a
        self.warm = self.ids(32)
        self.cold = [self.ids(a.prefix_len) for _ in range(a.repeats)]
        prefix = self.ids(a.prefix_len)
        self.shared = [prefix + self.ids(a.suffix_len) for _ in range(a.num_requests)]
        self.unshared = [self.ids(a.prefix_len + a.suffix_len) for _ in range(a.num_requests)]
        system = self.ids(a.system_len)
        self.users = [[self.ids(a.user_len) for _ in range(a.turns)] for _ in range(a.conversations)]
        self.system = system

    def repeat(self, w):
        cold, warm = [], []
        for p in self.cold:
            cold.append(run(generate(w.port, p, 1))[0])
            warm.append(run(generate(w.port, p, 1))[0])
        return {"cold_ttft_ms": ms(cold), "repeat_ttft_ms": ms(warm)}

    def many(self, w, prompts):
        (dur, res), hit_rate = w.hit_rate(lambda: run(together(w.port, prompts, self.a.output_len)))
        return {"duration_s": dur, "median_ttft_ms": ms([r[0] for r in res]),
                "hit_rate": hit_rate, "outputs": [r[2] for r in res]}

    def multiturn(self, w):
        a = self.a

        async def conversation(c):
            history, ttfts = list(self.system), []
            for t in range(a.turns):
                history += self.users[c][t]
                ttft, _, out = await generate(w.port, history, a.output_len)
                ttfts.append(ttft)
                history += out
            return ttfts, history

        async def all_of_them():
            start = time.perf_counter()
            r = await asyncio.gather(*(conversation(c) for c in range(a.conversations)))
            return time.perf_counter() - start, r

        (dur, res), hit_rate = w.hit_rate(lambda: run(all_of_them()))
        return {"duration_s": dur, "median_ttft_ms": ms([t for r in res for t in r[0]]),
                "hit_rate": hit_rate, "outputs": [r[1] for r in res]}

    def one_run(self, caching):
        w = Worker(self.a, caching)
        try:
            run(generate(w.port, self.warm, 4))  # first-request costs out of the way
            out = {}
            if "repeat" in self.a.only:
                out["repeat"] = self.repeat(w)
            if "shared" in self.a.only:
                out["shared"] = self.many(w, self.shared)
            if "unshared" in self.a.only:
                out["unshared"] = self.many(w, self.unshared)
            if "multiturn" in self.a.only:
                out["multiturn"] = self.multiturn(w)
            return out
        finally:
            w.stop()


def report(a, off, on):
    rows = []

    def line(name, k_off, k_on, unit):
        r = k_off / k_on if k_on else float("nan")
        rows.append((name, k_off, k_on, unit, r))

    print(f"============ Prefix caching ({a.device}, {os.path.basename(a.model_path.rstrip('/'))}) ============")
    print(f"{'':44} {'cache off':>12} {'cache on':>12} {'off/on':>8}")
    if "repeat" in on:
        line(f"repeat: TTFT of a {a.prefix_len}-token prompt, cold", off["repeat"]["cold_ttft_ms"],
             on["repeat"]["cold_ttft_ms"], "ms")
        line("repeat: TTFT of the same prompt again", off["repeat"]["repeat_ttft_ms"],
             on["repeat"]["repeat_ttft_ms"], "ms")
    for key, title in (("shared", f"shared: {a.num_requests} x ({a.prefix_len} shared + {a.suffix_len})"),
                       ("unshared", f"unshared: {a.num_requests} x {a.prefix_len + a.suffix_len} unique"),
                       ("multiturn", f"multiturn: {a.conversations} conversations x {a.turns} turns")):
        if key in on:
            line(f"{title}, end to end", off[key]["duration_s"], on[key]["duration_s"], "s")
            line(f"{key}: median TTFT", off[key]["median_ttft_ms"], on[key]["median_ttft_ms"], "ms")
    for name, o, n, unit, r in rows:
        print(f"{name:44} {o:>10.2f}{unit:>2} {n:>10.2f}{unit:>2} {r:>8.2f}")
    summary = {}
    if "repeat" in on:
        summary["repeat_ttft_vs_cold"] = on["repeat"]["repeat_ttft_ms"] / on["repeat"]["cold_ttft_ms"]
        print(f"repeated prompt's TTFT, cache on: {100 * summary['repeat_ttft_vs_cold']:.1f}% of cold "
              f"(target < 10%)")
    if "shared" in on:
        summary["shared_speedup"] = off["shared"]["duration_s"] / on["shared"]["duration_s"]
        print(f"shared prefix, end to end: {summary['shared_speedup']:.2f}x faster with the cache (target 5x); "
              f"hit rate {100 * on['shared']['hit_rate']:.1f}%")
    if "unshared" in on:
        summary["unshared_slowdown"] = on["unshared"]["duration_s"] / off["unshared"]["duration_s"] - 1
        print(f"unshared, end to end: {100 * summary['unshared_slowdown']:+.1f}% with the cache (target 0)")
    if "multiturn" in on:
        summary["multiturn_speedup"] = off["multiturn"]["duration_s"] / on["multiturn"]["duration_s"]
        print(f"multiturn, end to end: {summary['multiturn_speedup']:.2f}x faster with the cache; "
              f"hit rate {100 * on['multiturn']['hit_rate']:.1f}%")
    for key in ("shared", "unshared", "multiturn"):
        if key in on:
            same = sum(x == y for x, y in zip(off[key]["outputs"], on[key]["outputs"]))
            print(f"{key}: {same} of {len(on[key]['outputs'])} greedy outputs equal with the cache on and off")
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("SLUICE_BIN", os.path.join(REPO, "bin")))
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--tokenizer")
    ap.add_argument("--load-format", default="")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--worker-arg", action="append", default=[], help="passed to both workers (repeat)")
    ap.add_argument("--only", default="repeat,shared,unshared,multiturn")
    ap.add_argument("--prefix-len", type=int, default=4000)
    ap.add_argument("--suffix-len", type=int, default=32)
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="prompts timed cold then again")
    ap.add_argument("--conversations", type=int, default=16)
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--system-len", type=int, default=1000)
    ap.add_argument("--user-len", type=int, default=64)
    ap.add_argument("--vocab-size", type=int, default=128000, help="random ids are drawn below this")
    ap.add_argument("--min-token-id", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start-timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()
    a.only = set(a.only.split(","))
    b = Bench(a)
    b.inputs()
    off = b.one_run(False)
    on = b.one_run(True)
    summary = report(a, off, on)
    if a.json:
        strip = lambda d: {k: ({kk: vv for kk, vv in v.items() if kk != "outputs"} if isinstance(v, dict) else v)
                           for k, v in d.items()}
        with open(a.json, "w") as f:
            json.dump({"off": strip(off), "on": strip(on), "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
