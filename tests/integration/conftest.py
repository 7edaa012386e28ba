"""Shared helpers for the integration tests: they start the real binaries on 127.0.0.1 at
free ports, wait for them with bounded timeouts, and always kill what they started."""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SLUICE_BIN", REPO / "bin"))
DATA = Path(os.environ.get("SLUICE_TEST_DATA", REPO.parent / "shared"))
STORIES = DATA / "models" / "stories260K"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary(name):
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{path} is not built")
    return str(path)


def need_stories():
    if not (STORIES / "stories260K.gguf").exists():
        pytest.skip(f"test data not found at {STORIES} (set SLUICE_TEST_DATA)")
    return STORIES


def reference():
    return json.loads((need_stories() / "reference.json").read_text())


class Proc:
    """A started binary: its base URL, its log, and a kill that always runs."""

    def __init__(self, args, port, log_name, env=None):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(os.environ.get("PYTEST_TMPDIR", "/tmp")) / f"sluice-{log_name}-{port}.log"
        self.log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)

    def wait_http(self, path="/health", timeout=20.0, method="GET"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.p.args[0]} exited with {self.p.returncode}:\n{self.output()}")
            try:
                r = requests.request(method, self.url + path, timeout=1)
                if r.status_code < 500:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.p.args[0]} did not answer {path} within {timeout}s:\n{self.output()}")

    def output(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self, sig=None):
        if self.p.poll() is None:
            if sig is None:
                self.p.kill()
            else:
                self.p.send_signal(sig)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(timeout=10)
        self.log.close()


@pytest.fixture
def procs():
    """Start processes with procs.start(...); every one is killed when the test ends."""
    started = []

    class Starter:
        def start(self, args, port, name, env=None):
            p = Proc(args, port, name, env)
            started.append(p)
            return p

    yield Starter()
    for p in started:
        p.kill()


def start_controller(procs, *extra, env=None):
    port = free_port()
    return procs.start([binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(port), *extra],
                       port, "controller", env).wait_http("/health")


def slow_model(dir_path):
    """A model that takes milliseconds per token on one CPU thread, so that a generation is
    still running when a test acts on it: stories260K's config at larger widths with random
    weights (--load-format dummy) and its tokenizer. Greedy output is deterministic. Returns
    the extra worker flags."""
    config = json.loads((need_stories() / "hf" / "config.json").read_text())
    config.update(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=64, max_position_embeddings=4096)
    dir_path.mkdir(parents=True, exist_ok=True)
    (dir_path / "config.json").write_text(json.dumps(config))
    return ["--load-format", "dummy", "--tokenizer", str(need_stories() / "hf")]


def start_worker(procs, model_path=None, *extra, controller=None, env=None, wait=True):
    port = free_port()
    args = [binary("sluice-worker"), "--model-path", str(model_path or need_stories() / "hf"),
            "--device", "cpu", "--host", "127.0.0.1", "--port", str(port), "--threads", "1"]
    args += ["--controller-address", controller] if controller else ["--no-register"]
    p = procs.start(args + list(extra), port, "worker", env)
    return p.wait_http("/health", timeout=60) if wait else p


def start_gateway(procs, controller_url, *extra):
    port = free_port()
    args = [binary("sluice-gateway"), "--host", "127.0.0.1", "--port", str(port),
            "--controller-address", controller_url, "--controller-timeout-ms", "500", *extra]
    return procs.start(args, port, "gateway").wait_http("/health")
