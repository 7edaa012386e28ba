"""--quantization fp8 through the worker on the CPU (which dequantizes the e4m3 weights at load):
stories260K quantized per output channel still writes Hugging Face's greedy text for a good
stretch (e4m3 moves each weight by up to 1/16 of itself, so a trained model's close calls may
flip late in a story, not early), `sluice-worker bench` takes the flag too, and a bad value is
refused by name."""

import subprocess

import requests

from conftest import binary, need_stories, reference, start_worker

SHARED_PREFIX = 40  # characters of Hugging Face's bf16 greedy text the FP8 model must write first


def test_quantized_stories_writes_the_reference_greedy_text_first(procs):
    ref = reference()
    w = start_worker(procs, None, "--quantization", "fp8")
    for prompt, want in ref["prompts"].items():
        r = requests.post(w.url + "/worker_generate",
                          json={"prompt": prompt, "temperature": 0, "max_new_tokens": 32}, timeout=60)
        assert r.status_code == 200, r.text
        got = r.json()["text"]
        assert got[:SHARED_PREFIX] == want["greedy_text"][:SHARED_PREFIX], (prompt, got, want["greedy_text"])


def test_bench_takes_the_flag_and_refuses_bad_values():
    args = [binary("sluice-worker"), "bench", "--device", "cpu", "--model-path", str(need_stories() / "hf"),
            "--batch-sizes", "2", "--input-len", "8", "--output-len", "4"]
    p = subprocess.run(args + ["--quantization", "fp8"], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    p = subprocess.run(args + ["--quantization", "int4"], capture_output=True, timeout=60)
    assert p.returncode != 0 and b"--quantization must be none or fp8" in p.stderr


def test_worker_refuses_a_bad_value_by_name():
    p = subprocess.run([binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--device", "cpu",
                        "--no-register", "--port", "1", "--quantization", "fp4"], capture_output=True, timeout=30)
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode != 0 and "--quantization must be none or fp8, not 'fp4'" in out
