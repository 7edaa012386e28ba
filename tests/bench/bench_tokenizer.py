"""Encode speed, sluice's tokenizer against the `tokenizers` package on one thread, in one
run on the same few MB of mixed text (the conformance corpus repeated with variations: English,
code, CJK, Arabic, emoji, numbers, URLs). Both encode line by line without special tokens and
report the best of three passes; the token counts must agree.

    .venv/bin/python tests/bench/bench_tokenizer.py --tool build/bench/tokenizer_bench"""
import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # before tokenizers starts its thread pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"
from tokenizers import Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("SLUICE_TEST_DATA", REPO.parent / "shared"))


def make_text(megabytes):
    corpus = json.loads((REPO / "tests" / "fixtures" / "tokenizer_corpus.json").read_text())
    rng = random.Random(0)
    lines, size = [], 0
    while size < megabytes * 1_000_000:
        line = rng.choice(corpus) + " " + str(rng.randrange(10**6)) + "\n"
        lines.append(line)
        size += len(line.encode())
    return "".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tool", default=str(REPO / "build" / "bench" / "tokenizer_bench"))
    ap.add_argument("--megabytes", type=float, default=4)
    args = ap.parse_args()
    text = make_text(args.megabytes)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(text)
        path = f.name
    lines = text.splitlines(keepends=True)
    print(f"{len(text.encode()) / 1e6:.1f} MB, {len(lines)} lines, one thread each")
    print(f"{'tokenizer':<12} {'sluice tok/s':>14} {'tokenizers tok/s':>18} {'ratio':>7}")
    try:
        for name in ("llama2", "llama3_1", "qwen3"):
            tdir = DATA / "tokenizers" / name
            if not tdir.exists():
                continue
            ours = json.loads(subprocess.run([args.tool, str(tdir), path, "3"], check=True,
                                             capture_output=True, text=True).stdout)
            ref = Tokenizer.from_file(str(tdir / "tokenizer.json"))
            best, count = 1e30, 0
            for _ in range(3):
                t0 = time.perf_counter()
                count = sum(len(ref.encode(line, add_special_tokens=False).ids) for line in lines)
                best = min(best, time.perf_counter() - t0)
            agree = "" if count == ours["tokens"] else f"  (token counts differ: {ours['tokens']} vs {count})"
            print(f"{name:<12} {ours['tokens_per_s']:>14,.0f} {count / best:>18,.0f} "
                  f"{ours['tokens_per_s'] / (count / best):>6.1f}x{agree}")
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
