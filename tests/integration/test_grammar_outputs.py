"""Structured output, checked by other implementations: random walks over the real tokenizers'
vocabularies (tests/bench/grammar_bench.c `sample`: uniformly random allowed tokens, as a
random-weight model would pick, until the stop token) decode to text that Python's json
parses and the jsonschema package validates; regex outputs match with Python's re, choice
outputs are one of the choices."""
import json
import re
import subprocess

import jsonschema
import pytest

from conftest import BIN, DATA, REPO

FIXTURES = REPO / "tests" / "fixtures" / "grammar"
TOKENIZERS = ["llama3_1", "qwen3", "llama2"]


def tool():
    # Bench programs are built beside the binaries: bin/ -> build/bench, build/asan/bin -> build/asan/bench.
    for path in (BIN.parent / "bench" / "grammar_bench", REPO / "build" / "bench" / "grammar_bench"):
        if path.exists():
            return str(path)
    pytest.skip("grammar_bench is not built")


def tokenizer(name):
    path = DATA / "tokenizers" / name
    if not path.exists():
        pytest.skip(f"test data not found at {path} (set SLUICE_TEST_DATA)")
    return str(path)


def sample(tok, kind, source_file, n, seed, max_tokens=1500):
    out = subprocess.run([tool(), "sample", tokenizer(tok), kind, str(source_file), str(n), str(seed), str(max_tokens)],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(lines) == n
    finished = [line["text"] for line in lines if line["finished"]]
    assert len(finished) >= n // 2, f"only {len(finished)} of {n} walks finished"
    return finished


@pytest.mark.parametrize("tok", TOKENIZERS)
@pytest.mark.parametrize("schema", ["bounded_schema.json", "tree_schema.json"])
def test_json_schema_outputs_validate(tok, schema):
    spec = json.loads((FIXTURES / schema).read_text())
    for text in sample(tok, "json_schema", FIXTURES / schema, 6, 11):
        jsonschema.validate(json.loads(text), spec, cls=jsonschema.Draft202012Validator)


@pytest.mark.parametrize("tok", TOKENIZERS)
def test_json_object_outputs_are_objects(tok):
    for text in sample(tok, "json_object", FIXTURES / "order_schema.json", 6, 12, max_tokens=800):
        assert isinstance(json.loads(text), dict), text


def test_regex_and_choice_outputs(tmp_path):
    pattern = r"(\+\d{1,3} )?\(?\d{3}\)?[ -]?\d{3}-\d{4}|[A-Z][a-z]{2,8}(-[A-Z][a-z]{1,8})?"
    src = tmp_path / "re.txt"
    src.write_text(pattern)
    for tok in TOKENIZERS:
        for text in sample(tok, "regex", src, 8, 13):
            assert re.fullmatch(pattern, text), (tok, text)
    choices = ["positive", "negative", "neutral", "mixed feelings", "n/a", "Émile's \"quote\""]
    src = tmp_path / "choice.json"
    src.write_text(json.dumps(choices))
    for tok in TOKENIZERS:
        got = sample(tok, "choice", src, 8, 14)
        assert all(text in choices for text in got), (tok, got)
