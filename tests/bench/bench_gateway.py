"""Gateway benchmark: what the gateway and controller add to a request, and 1,000 concurrent
streams through the gateway with no failure.

Starts the real controller and gateway, and as upstream a fast asyncio stand-in for the
worker's POST /generate (so the numbers are the gateway's, not a model's). Prints p50/p99 of
request latency and of the gap between tokens, calling the worker directly and through the
gateway, then runs the concurrent streams.

    SLUICE_BIN=build/gw/bin .venv/bin/python tests/bench/bench_gateway.py [--requests 500] [--streams 1000]
"""
import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SLUICE_BIN", REPO / "bin"))
MODEL = "bench-model"
SLOW_MODEL = "bench-model-paced"  # the same stand-in, pacing its tokens so streams overlap


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the stand-in worker ----------------------------------------------------------------------

async def worker_conn(reader, writer, tokens, token_delay, model):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            if head.startswith(b"GET"):
                data = b'{"status":"ok"}'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(data), data))
                continue
            if b"/worker_get_status" in head.split(b"\r\n")[0]:
                data = json.dumps({"model_names": [model], "speed": 1, "queue_length": 0}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(data), data))
                continue
            n = body.get("max_tokens") or tokens
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n")
            for i in range(n):
                frame = json.dumps({"text": " tok", "token_ids": [7], "finish_reason": "length" if i == n - 1 else None,
                                    "usage": {"prompt_tokens": 4, "completion_tokens": i + 1}}).encode() + b"\n"
                writer.write(b"%x\r\n%s\r\n" % (len(frame), frame))
                await writer.drain()
                if token_delay and i < n - 1:
                    await asyncio.sleep(token_delay)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


# --- a minimal keep-alive HTTP/1.1 client that timestamps each body chunk -----------------------

class Conn:
    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def request(self, path, body):
        """POSTs body; returns (status, [(time, chunk bytes)...])."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        chunks = []
        if b"chunked" in head.lower():
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                payload = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append((time.perf_counter(), payload[:-2]))
        else:
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            chunks.append((time.perf_counter(), await self.reader.readexactly(length)))
        if b"connection: close" in head.lower():
            self.close()
        return status, chunks

    def close(self):
        if self.writer:
            self.writer.close()
        self.reader = self.writer = None


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1e3


async def latency(port, path, body, n, token_marker):
    conn = Conn(port)
    req, gaps = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        status, chunks = await conn.request(path, body)
        assert status == 200, (status, chunks)
        req.append(time.perf_counter() - t0)
        times = [t for t, c in chunks if token_marker in c]
        gaps += [b - a for a, b in zip(times, times[1:])]
    conn.close()
    return req, gaps


async def concurrent_streams(port, n, tokens):
    body = {"model": SLOW_MODEL, "prompt": "x", "max_tokens": tokens, "stream": True}
    failures = []

    async def one():
        conn = Conn(port)
        try:
            status, chunks = await conn.request("/v1/completions", body)
            text = b"".join(c for _, c in chunks)
            if status != 200 or b"data: [DONE]" not in text or b'"error"' in text or text.count(b" tok") != tokens:
                failures.append((status, text[-200:]))
        except Exception as e:  # noqa: BLE001 - every failure counts
            failures.append(repr(e))
        finally:
            conn.close()

    peak = 0
    done = False

    async def watch():
        nonlocal peak
        conn = Conn(port)
        while not done:
            status, chunks = await get(conn, "/metrics")
            for line in chunks[0][1].decode().splitlines():
                if line.startswith("sluice_gateway_active_requests "):
                    peak = max(peak, int(line.split()[1]))
            await asyncio.sleep(0.02)
        conn.close()

    t0 = time.perf_counter()
    watcher = asyncio.ensure_future(watch())
    await asyncio.gather(*(one() for _ in range(n)))
    elapsed = time.perf_counter() - t0
    done = True
    await watcher
    return elapsed, failures, peak


def cpu_seconds(pid):
    """User + system CPU time of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def chunk_rate(port, gateway_pid, streams, tokens):
    """Streams as fast as the stand-in worker writes; returns (chunks, wall s, gateway CPU s).
    Chunks over the gateway's own CPU seconds is what one gateway core carries, whatever the
    Python stand-ins on the other side of it cost."""
    body = {"model": MODEL, "prompt": "x", "max_tokens": tokens, "stream": True}
    counts = []

    async def one():
        conn = Conn(port)
        try:
            status, chunks = await conn.request("/v1/completions", body)
            counts.append(sum(c.count(b"data: ") for _, c in chunks) if status == 200 else 0)
        finally:
            conn.close()

    cpu0, t0 = cpu_seconds(gateway_pid), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    return sum(counts), time.perf_counter() - t0, cpu_seconds(gateway_pid) - cpu0


async def get(conn, path):
    if conn.writer is None:
        conn.reader, conn.writer = await asyncio.open_connection("127.0.0.1", conn.port)
    conn.writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    head = await conn.reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return int(head.split(b" ")[1]), [(time.perf_counter(), await conn.reader.readexactly(length))]


def wait_http(port, path, proc, timeout=20):
    import urllib.request
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except Exception:  # noqa: BLE001
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not answer {path}")


async def main(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    procs = []
    try:
        wport, sport = free_port(), free_port()
        server = await asyncio.start_server(lambda r, w: worker_conn(r, w, args.tokens, 0, MODEL),
                                            "127.0.0.1", wport, backlog=4096)
        paced = await asyncio.start_server(lambda r, w: worker_conn(r, w, args.tokens, args.token_delay, SLOW_MODEL),
                                           "127.0.0.1", sport, backlog=4096)
        cport, gport = free_port(), free_port()
        procs.append(subprocess.Popen([str(BIN / "sluice-controller"), "--host", "127.0.0.1", "--port", str(cport),
                                       "--log-level", "warn"]))
        await asyncio.to_thread(wait_http, cport, "/health", procs[-1])
        reg = Conn(cport)
        for port, model in ((wport, MODEL), (sport, SLOW_MODEL)):
            status, _ = await reg.request("/register_worker", {
                "worker_name": f"http://127.0.0.1:{port}", "check_heart_beat": False,
                "worker_status": {"model_names": [model], "speed": 1, "queue_length": 0}})
            assert status == 200
        reg.close()
        procs.append(subprocess.Popen([str(BIN / "sluice-gateway"), "--host", "127.0.0.1", "--port", str(gport),
                                       "--controller-address", f"http://127.0.0.1:{cport}", "--log-level", "warn"]))
        await asyncio.to_thread(wait_http, gport, "/health", procs[-1])

        async with server, paced:
            direct = {"prompt": "x", "max_tokens": args.tokens}
            via = {"model": MODEL, "prompt": "x", "max_tokens": args.tokens, "stream": True}
            await latency(wport, "/generate", direct, 20, b"tok")  # warm up both paths
            await latency(gport, "/v1/completions", via, 20, b"tok")
            d_req, d_gap = await latency(wport, "/generate", direct, args.requests, b"tok")
            g_req, g_gap = await latency(gport, "/v1/completions", via, args.requests, b"tok")
            print(f"{args.requests} sequential streamed requests of {args.tokens} tokens")
            print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
            print(f"{'request, worker direct':28}{pct(d_req, 50):10.3f}{pct(d_req, 99):10.3f}")
            print(f"{'request, through gateway':28}{pct(g_req, 50):10.3f}{pct(g_req, 99):10.3f}")
            print(f"{'added per request':28}{pct(g_req, 50) - pct(d_req, 50):10.3f}{pct(g_req, 99) - pct(d_req, 99):10.3f}")
            if d_gap and g_gap:
                print(f"{'token gap, worker direct':28}{pct(d_gap, 50):10.3f}{pct(d_gap, 99):10.3f}")
                print(f"{'token gap, through gateway':28}{pct(g_gap, 50):10.3f}{pct(g_gap, 99):10.3f}")
            elapsed, failures, peak = await concurrent_streams(gport, args.streams, args.tokens)
            print(f"{args.streams} concurrent streams through the gateway ({args.tokens} tokens, "
                  f"{args.token_delay * 1e3:g} ms apart): {elapsed:.2f} s, peak {peak} in flight, "
                  f"{len(failures)} failed")
            for f in failures[:5]:
                print("  failure:", f)
            chunks, wall, cpu = await chunk_rate(gport, procs[-1].pid, args.rate_streams, args.rate_tokens)
            print(f"chunk rate: {chunks} SSE chunks over {args.rate_streams} streams in {wall:.2f} s "
                  f"({chunks / wall:,.0f}/s wall); gateway CPU {cpu:.2f} s -> "
                  f"{chunks / max(cpu, 1e-9):,.0f} chunks per gateway CPU second")
            return 1 if failures else 0
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rate-streams", type=int, default=100)
    ap.add_argument("--rate-tokens", type=int, default=500)
    ap.add_argument("--token-delay", type=float, default=0.05,
                    help="seconds between tokens in the concurrent-streams run")
    sys.exit(asyncio.run(main(ap.parse_args())))
