"""`sluice-worker bench` on the CPU backend: one table row per batch size, with and without the
untimed warm-up round, and clear refusals of bad flags."""

import subprocess

from conftest import binary, need_stories


def bench(*args):
    p = subprocess.run([binary("sluice-worker"), "bench", "--device", "cpu",
                        "--model-path", str(need_stories() / "stories260K.gguf"), *args],
                       capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode(errors="replace")


def rows(out):
    lines = out.strip().splitlines()
    assert lines[0].split() == ["batch", "input", "output", "prefill_s", "decode_tok/s", "step_ms", "total_s"]
    return [line.split() for line in lines[1:]]


def test_one_row_per_batch_size_with_and_without_warmup():
    for warmup in ("0", "1", "2"):
        rc, out, err = bench("--batch-sizes", "1,3", "--input-len", "12", "--output-len", "6", "--warmup", warmup)
        assert rc == 0, err
        table = rows(out)
        assert [r[:3] for r in table] == [["1", "12", "6"], ["3", "12", "6"]]
        for r in table:
            prefill, tok_s, step_ms, total = map(float, r[3:])
            assert 0 < prefill <= total and tok_s > 0 and step_ms > 0


def test_one_output_token_has_no_decode_rate():
    rc, out, err = bench("--batch-sizes", "2", "--input-len", "8", "--output-len", "1")
    assert rc == 0, err
    assert [float(x) for x in rows(out)[0][4:6]] == [0.0, 0.0]


def test_bad_flags_are_refused_by_name():
    rc, _, err = bench("--warmup", "-1")
    assert rc == 2 and "--warmup" in err
    rc, _, err = bench("--batch-sizes", "0")
    assert rc == 2 and "--batch-sizes" in err
