"""--kv-cache-dtype fp8 through the worker on the CPU: the cache holds e4m3 codes (the log says
so, and which scales), stories260K still writes Hugging Face's greedy text for a stretch (each K
and V value moves by up to 1/16 of itself; the logits by about 4% of their norm, so close calls
may flip later in a story), the prefix cache shares FP8 blocks, a checkpoint's k_scale/v_scale
are read and a bad one refused by name, `sluice-worker bench` takes the flag, and a bad value is
refused with the flag's accepted values. tests/unit/backend/test_cpu_kv_fp8.c bounds the logits."""

import shutil
import subprocess

import numpy as np
import pytest
import requests

from conftest import binary, need_stories, reference, start_worker

SHARED_PREFIX = 40  # characters of Hugging Face's greedy text the FP8 cache must write first


def generate(w, prompt, n=32):
    r = requests.post(w.url + "/worker_generate", json={"prompt": prompt, "temperature": 0, "max_new_tokens": n},
                      timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["text"]


def test_fp8_cache_writes_the_reference_greedy_text_first(procs):
    ref = reference()
    w = start_worker(procs, None, "--kv-cache-dtype", "fp8")
    log = w.output()
    assert "KV cache fp8_e4m3" in log and "scales 1 (the checkpoint has no k_scale/v_scale)" in log, log
    for prompt, want in ref["prompts"].items():
        got = generate(w, prompt)
        assert got[:SHARED_PREFIX] == want["greedy_text"][:SHARED_PREFIX], (prompt, got, want["greedy_text"])


def test_fp8_cache_is_half_a_bf16_token_and_a_quarter_of_float32(procs):
    """The same --kv-cache-tokens take a quarter of the CPU's float32 bytes (a bf16 cache's half)."""
    sizes = {}
    for dtype in ("auto", "fp8_e4m3"):
        w = start_worker(procs, None, "--kv-cache-dtype", dtype, "--kv-cache-tokens", "4096")
        line = next(l for l in w.output().splitlines() if "KV cache" in l and "bytes" in l)
        sizes[dtype] = int(line.split("KV cache ")[1].split()[1])
        w.kill()
    assert sizes["auto"] == 4 * sizes["fp8_e4m3"], sizes


def test_prefix_cache_shares_fp8_blocks(procs):
    """A prompt of several full blocks sent twice: the second maps the first's FP8 blocks and,
    the CPU being deterministic, writes the same text."""
    w = start_worker(procs, None, "--kv-cache-dtype", "fp8")
    prompt = "Once upon a time there was a little girl named Lily. She loved to play outside in the park " * 2
    first, second = generate(w, prompt, 16), generate(w, prompt, 16)
    assert first == second
    m = requests.get(w.url + "/metrics", timeout=10).text
    hits = [float(l.split()[-1]) for l in m.splitlines() if l.startswith("sluice_worker_prefix_cache_hits_total")]
    assert hits and hits[0] > 0, m


def model_with_scales(tmp_path, k_scale, v_scale):
    """stories260K's directory with per-layer k_scale and v_scale tensors, as vLLM's FP8
    checkpoints carry them (scalars)."""
    from safetensors.numpy import load_file, save_file

    src = need_stories() / "hf"
    dst = tmp_path / "stories-kv-scales"
    shutil.copytree(src, dst)
    tensors = load_file(str(src / "model.safetensors"))
    layers = {int(k.split(".")[2]) for k in tensors if k.startswith("model.layers.")}
    for l in layers:
        tensors[f"model.layers.{l}.self_attn.k_scale"] = np.array(k_scale, dtype=np.float32)
        tensors[f"model.layers.{l}.self_attn.v_scale"] = np.array(v_scale, dtype=np.float32)
    save_file(tensors, str(dst / "model.safetensors"))
    return dst, len(layers)


def test_checkpoint_scales_are_read_and_logged(procs, tmp_path):
    pytest.importorskip("safetensors")
    path, n_layers = model_with_scales(tmp_path, 0.25, 0.125)
    w = start_worker(procs, path, "--kv-cache-dtype", "fp8")
    log = w.output()
    assert f"the checkpoint's k_scale/v_scale for {n_layers} of {n_layers} layers (0.125 to 0.25)" in log, log
    ref = reference()
    prompt, want = next(iter(ref["prompts"].items()))
    assert generate(w, prompt)[:SHARED_PREFIX] == want["greedy_text"][:SHARED_PREFIX]


def test_a_bad_checkpoint_scale_is_refused_by_name(procs, tmp_path):
    pytest.importorskip("safetensors")
    path, _ = model_with_scales(tmp_path, -1.0, 0.5)
    w = start_worker(procs, path, "--kv-cache-dtype", "fp8", wait=False)
    w.p.wait(timeout=60)
    out = w.output()
    assert w.p.returncode != 0 and "model.layers.0.self_attn.k_scale" in out and "positive finite" in out, out


def test_worker_refuses_other_dtypes_naming_the_flag():
    for bad in ("fp8_e5m2", "int8"):
        p = subprocess.run([binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--device", "cpu",
                            "--no-register", "--port", "1", "--kv-cache-dtype", bad], capture_output=True, timeout=30)
        out = (p.stdout + p.stderr).decode(errors="replace")
        assert p.returncode == 2 and f"--kv-cache-dtype must be auto, fp8 or fp8_e4m3, not '{bad}'" in out, out


def test_bench_takes_the_flag():
    args = [binary("sluice-worker"), "bench", "--device", "cpu", "--model-path", str(need_stories() / "hf"),
            "--batch-sizes", "2", "--input-len", "8", "--output-len", "4"]
    p = subprocess.run(args + ["--kv-cache-dtype", "fp8"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    p = subprocess.run(args + ["--kv-cache-dtype", "e5m2"], capture_output=True, timeout=60)
    assert p.returncode != 0 and b"--kv-cache-dtype must be auto, fp8 or fp8_e4m3" in p.stderr
