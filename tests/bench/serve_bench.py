#!/usr/bin/env python3
"""Load generator for an OpenAI-compatible server, reporting what vLLM's benchmark_serving
reports: request throughput, output and total token throughput, TTFT, TPOT, ITL and
end-to-end latency (mean, median, p99).

Random dataset: each prompt is --input-len random token ids (sent as a token-id list to
/v1/completions, so the length is exact), each answer exactly --output-len tokens
(ignore_eos). Arrivals are Poisson at --request-rate, or all at once with 'inf';
--max-concurrency caps requests in flight. Standard library only (asyncio sockets), so it runs
wherever python3 does."""
import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from urllib.parse import urlparse


async def stream_completion(host, port, path, body, headers):
    """POST and read an SSE stream; returns (ttft, itls, e2e, output_tokens, error)."""
    reader, writer = await asyncio.open_connection(host, port)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nAccept: text/event-stream\r\n{headers}Connection: close\r\n\r\n")
    start = time.perf_counter()
    writer.write(head.encode() + payload)
    await writer.drain()
    status_line = await reader.readline()
    status = int(status_line.split()[1]) if status_line else 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    if status != 200:
        data = await reader.read()
        writer.close()
        return None, [], 0, 0, f"HTTP {status}: {data[:200]!r}"

    async def body_bytes():
        if not chunked:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                yield data
        while True:
            size_line = await reader.readline()
            size = int(size_line.strip().split(b";")[0] or b"0", 16)
            if size == 0:
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]

    ttft, last, itls, tokens, error, buf = None, None, [], 0, None, b""
    async for data in body_bytes():
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: "):
                continue
            text = event[6:]
            if text == b"[DONE]":
                continue
            obj = json.loads(text)
            if "error" in obj:
                error = obj["error"].get("message", "error")
                continue
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
            if obj.get("choices") and obj["choices"][0].get("text"):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - start
                else:
                    itls.append(now - last)
                last = now
    writer.close()
    return ttft, itls, time.perf_counter() - start, tokens, error


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


async def main_async(args):
    u = urlparse(args.base_url)
    host, port = u.hostname, u.port or 80
    path = u.path.rstrip("/") + "/completions"
    headers = f"Authorization: Bearer {args.api_key}\r\n" if args.api_key else ""
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(args.min_token_id, args.vocab_size) for _ in range(args.input_len)]
               for _ in range(args.num_prompts)]
    sem = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
    results, done = [], 0

    tty = sys.stderr.isatty()
    step = max(1, args.num_prompts // 10)

    def progress():
        # A bar redrawn in place on a terminal; a line per tenth in a log.
        if not tty and done % step and done != args.num_prompts:
            return
        width = 40
        filled = int(width * done / args.num_prompts)
        end = "" if tty else "\n"
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{args.num_prompts}{end}")
        sys.stderr.flush()

    async def one(prompt):
        nonlocal done
        body = {"model": args.model, "prompt": prompt, "max_tokens": args.output_len, "stream": True,
                "ignore_eos": args.ignore_eos, "temperature": 0,
                "stream_options": {"include_usage": True}}
        if sem:
            async with sem:
                r = await stream_completion(host, port, path, body, headers)
        else:
            r = await stream_completion(host, port, path, body, headers)
        results.append(r)
        done += 1
        progress()

    start = time.perf_counter()
    tasks = []
    for prompt in prompts:
        tasks.append(asyncio.create_task(one(prompt)))
        if args.request_rate != float("inf"):
            await asyncio.sleep(rng.expovariate(args.request_rate))
    await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    sys.stderr.write("\n")

    ok = [r for r in results if r[4] is None and r[0] is not None]
    failed = len(results) - len(ok)
    out_tokens = sum(r[3] for r in ok)
    ttfts = [r[0] * 1000 for r in ok]
    itls = [x * 1000 for r in ok for x in r[1]]
    tpots = [(r[2] - r[0]) * 1000 / (r[3] - 1) for r in ok if r[3] > 1]
    e2es = [r[2] * 1000 for r in ok]
    report = {
        "successful_requests": len(ok), "failed_requests": failed, "duration_s": duration,
        "total_input_tokens": len(ok) * args.input_len, "total_output_tokens": out_tokens,
        "request_throughput": len(ok) / duration, "output_throughput": out_tokens / duration,
        "total_token_throughput": (out_tokens + len(ok) * args.input_len) / duration,
    }
    for name, vals in (("ttft_ms", ttfts), ("tpot_ms", tpots), ("itl_ms", itls), ("e2el_ms", e2es)):
        report[f"mean_{name}"] = statistics.fmean(vals) if vals else float("nan")
        report[f"median_{name}"] = statistics.median(vals) if vals else float("nan")
        report[f"p99_{name}"] = pct(vals, 99)
    errors = sorted({r[4] for r in results if r[4]})[:3]
    print("============ Serving Benchmark Result ============")
    for k, v in report.items():
        print(f"{k:<28} {v:>14.2f}" if isinstance(v, float) else f"{k:<28} {v:>14}")
    if errors:
        print("errors:", *errors, sep="\n  ")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if failed == 0 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--api-key", default="")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--num-prompts", type=int, default=500)
    ap.add_argument("--request-rate", type=float, default=float("inf"))
    ap.add_argument("--max-concurrency", type=int, default=0)
    ap.add_argument("--ignore-eos", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--vocab-size", type=int, default=32000, help="random ids are drawn below this")
    ap.add_argument("--min-token-id", type=int, default=3, help="and at or above this (skips BOS/EOS)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
