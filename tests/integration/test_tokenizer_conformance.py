"""The C tokenizer against Hugging Face, through `sluice-worker tokenize` / `sluice-worker
detokenize`: on model directories the oracle is `transformers.AutoTokenizer.from_pretrained(dir)`
(what Hugging Face users and vLLM get, tokenizer_config.json's class included); on a bare
tokenizer.json and on GGUF files it is the `tokenizers` package. The same ids with and without
special tokens and the same decoded text, on a varied corpus, random strings, whitespace and
special-token edge cases and random ids; plus fuzzing for crashes and round trips."""
import functools
import json
import os
import random
import subprocess
import unicodedata
import warnings
import zlib

import pytest

from conftest import DATA, REPO, binary

tokenizers = pytest.importorskip("tokenizers")

CORPUS = json.loads((REPO / "tests" / "fixtures" / "tokenizer_corpus.json").read_text(encoding="utf-8"))
TINY = REPO / "examples" / "models" / "tiny-dummy"

# (name, what sluice loads, the reference: a directory for AutoTokenizer or a tokenizer.json)
CASES = [
    ("stories260K-hf", "models/stories260K/hf", "models/stories260K/hf"),
    # llama.cpp's SentencePiece pipeline is tokenizer.json's own
    ("stories260K-gguf", "models/stories260K/stories260K.gguf", "models/stories260K/hf/tokenizer.json"),
    ("llama2", "tokenizers/llama2", "tokenizers/llama2"),
    ("llama3_1", "tokenizers/llama3_1", "tokenizers/llama3_1"),
    ("qwen3", "tokenizers/qwen3", "tokenizers/qwen3"),
    ("tiny-dummy", str(TINY), str(TINY)),
]
# transformers 5 builds these classes' pipelines itself (worker/tokenizer/tok_load_class.c).
LLAMA_CLASS = {"stories260K-hf", "llama2", "tiny-dummy"}


class Ref:
    """One reference tokenizer: transformers' AutoTokenizer on a directory, or the tokenizers
    package on a tokenizer.json file."""

    def __init__(self, path):
        self.auto = path.is_dir()
        if self.auto:
            transformers = pytest.importorskip("transformers")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                transformers.logging.set_verbosity_error()
                self.t = transformers.AutoTokenizer.from_pretrained(str(path))
        else:
            self.t = tokenizers.Tokenizer.from_file(str(path))

    def encode(self, texts, add_special):
        if self.auto:
            return [self.t.encode(t, add_special_tokens=add_special) for t in texts]
        return [e.ids for e in self.t.encode_batch(texts, add_special_tokens=add_special)]

    def decode(self, ids, skip):
        return self.t.decode(ids, skip_special_tokens=skip)

    def vocab_size(self):
        return len(self.t) if self.auto else self.t.get_vocab_size()


@functools.lru_cache(maxsize=None)
def reference(path):
    return Ref(path)


def worker():
    return binary("sluice-worker")


def paths(case):
    _, path, ref = case
    if not (DATA / path).exists() or not (DATA / ref).exists():
        pytest.skip(f"test data not found at {DATA / path} (set SLUICE_TEST_DATA)")
    return str(DATA / path), reference(DATA / ref)


def run_lines(args, lines, timeout=60):
    """Feeds one line per input, returns one parsed JSON value per output line."""
    data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogatepass")
    out = subprocess.run(args, input=data, capture_output=True, timeout=timeout)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    # Split on "\n" only: the output may hold U+2028 and friends, which splitlines() would cut.
    text = out.stdout.decode("utf-8")
    rows = text.split("\n")
    assert rows[-1] == ""
    rows = rows[:-1]
    assert len(rows) == len(lines), out.stderr.decode(errors="replace")
    return [json.loads(r) for r in rows]


def encode(path, texts, add_special):
    args = [worker(), "tokenize", "--tokenizer", path] + (["--add-special-tokens"] if add_special else [])
    return run_lines(args, [json.dumps(t) for t in texts])


def decode(path, id_lists, skip_special):
    args = [worker(), "detokenize", "--tokenizer", path] + (["--skip-special-tokens"] if skip_special else [])
    return run_lines(args, [json.dumps(ids) for ids in id_lists])


def check_against(name, path, ref, texts):
    """Both encodings of texts, and both decodings of the ids, against the reference."""
    for add_special in (True, False):
        want = ref.encode(texts, add_special)
        got = encode(path, texts, add_special)
        for text, g, w in zip(texts, got, want):
            assert g == w, f"{name} add_special={add_special}: {text!r}"
        for skip in (True, False):
            for ids, d in zip(want, decode(path, want, skip)):
                assert d == ref.decode(ids, skip), f"{name} skip={skip}: {ids}"


def random_strings(seed, count, with_specials=True):
    rng = random.Random(seed)
    pools = [
        [chr(c) for c in range(32, 127) if with_specials or c != ord("<")],
        list(" \t\n\r  \u00a0\u3000\u2028"),
        [chr(c) for c in range(0xC0, 0x250)],
        [chr(c) for c in range(0x300, 0x370)],
        [chr(c) for c in range(0x4E00, 0x4E80)],
        [chr(c) for c in range(0x3040, 0x3100)],
        [chr(c) for c in range(0xAC00, 0xAC40)] + [chr(c) for c in range(0x1100, 0x1175)],
        [chr(c) for c in range(0x600, 0x660)],
        ["😀", "👍", "🏽", "\u200d", "👨", "👩", "❤", "\ufe0f", "🇫", "🇷"],
        [chr(c) for c in range(0x1D400, 0x1D420)],
        list("0123456789"),
        [chr(c) for c in range(0, 32)],
    ]
    if with_specials:
        pools.append(["<s>", "</s>", "<unk>", "<|im_start|>", "<|eot_id|>", "<think>", "<0x0A>", "'s", "'LL"])
    return ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_encode_and_decode_match_reference(case):
    path, ref = paths(case)
    check_against(case[0], path, ref, CORPUS + random_strings(7, 400))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_decode_random_ids_matches_reference(case):
    path, ref = paths(case)
    rng = random.Random(11)
    vocab = ref.vocab_size()
    id_lists = [[rng.randrange(vocab) if rng.random() < 0.5 else rng.randrange(min(vocab, 600))
                 for _ in range(rng.randint(0, 20))] for _ in range(500)]
    for skip in (True, False):
        for ids, d in zip(id_lists, decode(path, id_lists, skip)):
            assert d == ref.decode(ids, skip), f"{case[0]} skip={skip}: {ids}"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fuzz_round_trip(case):
    """Byte fallback and byte-level BPE lose nothing: decode(encode(x)) == x (NFC for Qwen3).
    transformers' Llama class puts no "▁" of its own before text that starts with a space,
    so the decoder's Strip takes that space away: x without it, as transformers gives too."""
    path, _ = paths(case)
    texts = random_strings(zlib.crc32(case[0].encode()), 300, with_specials=False)
    texts += [" a", "  two", " "]
    ids = encode(path, texts, False)
    back = decode(path, ids, True)
    nfc = case[0] == "qwen3"
    for text, b in zip(texts, back):
        want = unicodedata.normalize("NFC", text) if nfc else text
        if case[0] in LLAMA_CLASS and want.startswith(" "):
            want = want[1:]
        assert b == want, f"{case[0]}: {text!r}"


# Whitespace and special tokens: leading, trailing and inner runs of spaces, tabs and
# newlines, whitespace alone, the empty string, special tokens with spaces around them and
# next to each other, the metaspace character itself, and other scripts.
WHITESPACE = [
    "", " ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t \n ", "  \n\n  ",
    "a", " a", "  a", "   a", "\ta", "\t\t a", "\na", "a ", "a  ", "a\t", "a\n", "a\n\n", "a b", "a  b",
    "a   b", "a \t b", "a \n b", " a b ", "  hello   world  ", "hello\t\tworld\n\nbye",
    "<s>", "</s>", "<unk>", " <s>", "<s> ", "<s>  ", "<s> a", "<s>a", "<s>  a", "a<s>", "a <s>", "a <s> b",
    "<s> </s>", "<s></s>", "<s>  </s>", "</s>  x", " </s> ", "</s>\n", "\n</s>", "<unk> <s> </s>",
    "<s><s> hi</s>", "<|begin_of_text|> hi", "<|begin_of_text|>  hi", "<|eot_id|>\n\n", " <|eot_id|> ",
    "<|im_start|>user\n hi<|im_end|>\n", "<|im_start|> <|im_end|>", "<think>\n\n</think>\n\n",
    "\u2581", " \u2581", "\u2581 a", "\u2581\u2581 a ", "\u3000", " \u3000a", "\u00a0a", "a\u00a0 b",
    "h\u00e9llo  w\u00f6rld", " \u65e5\u672c \u8a9e ", "\U0001F600 \U0001F600", "  \U0001F600", "\u2028 a",
    "caf\u00e9 \t", " 'll 've", "  12  345 ",
]


def whitespace_strings(seed, count):
    rng = random.Random(seed)
    parts = [" ", " ", "  ", "   ", "\t", "\n", "\r\n", "\u3000", "\u00a0", "a", "word", "\u65e5", "\U0001F600",
             "\u2581", "<s>", "</s>", "<unk>", "<|begin_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>",
             "'s", "1", "."]
    return ["".join(rng.choice(parts) for _ in range(rng.randint(0, 8))) for _ in range(count)]


@pytest.mark.parametrize("case", [c for c in CASES if c[0] != "stories260K-gguf"], ids=lambda c: c[0])
def test_whitespace_and_special_tokens_match_transformers(case):
    path, ref = paths(case)
    assert ref.auto
    check_against(case[0], path, ref, WHITESPACE + whitespace_strings(zlib.crc32(case[0].encode()), 400))


def llama_config_variants():
    base = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    return {
        "legacy-true": (dict(base, legacy=True), None),
        "legacy-false": (dict(base, legacy=False), None),
        "legacy-missing": (base, None),
        "legacy-null": (dict(base, legacy=None), None),
        "prefix-space-false": (dict(base, add_prefix_space=False), None),
        "prefix-space-false-legacy": (dict(base, add_prefix_space=False, legacy=True), None),
        "prefix-space-true-legacy-false": (dict(base, add_prefix_space=True, legacy=False), None),
        "fast-class": (dict(base, tokenizer_class="LlamaTokenizerFast", legacy=True), None),
        "bos-off-eos-on": (dict(base, add_bos_token=False, add_eos_token=True), None),
        "model-llama": (dict(base, legacy=True), {"model_type": "llama"}),
        "model-mistral": (dict(base, legacy=True), {"model_type": "mistral"}),
        "model-mixtral": (dict(base, legacy=False), {"model_type": "mixtral"}),
        "generic-class": (dict(base, tokenizer_class="PreTrainedTokenizerFast"), None),
        "no-class": ({k: v for k, v in base.items() if k != "tokenizer_class"}, None),
    }


@pytest.mark.parametrize("name", sorted(llama_config_variants()))
def test_llama_config_variants_match_transformers(name, tmp_path):
    """stories260K's tokenizer.json under tokenizer_config.json (and config.json) variants:
    what the class, legacy, add_prefix_space, add_bos_token and the model type change."""
    src = DATA / "models/stories260K/hf/tokenizer.json"
    if not src.exists():
        pytest.skip(f"test data not found at {src} (set SLUICE_TEST_DATA)")
    cfg, model_cfg = llama_config_variants()[name]
    (tmp_path / "tokenizer.json").write_bytes(src.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    if model_cfg:
        (tmp_path / "config.json").write_text(json.dumps(model_cfg))
    texts = WHITESPACE + whitespace_strings(23, 150) + CORPUS
    check_against(name, str(tmp_path), Ref(tmp_path), texts)


FIXTURE = REPO / "tests" / "fixtures" / "tokenizer_whitespace.json"
FIXTURE_TOKENIZERS = {"stories260K-hf": "models/stories260K/hf", "llama2": "tokenizers/llama2",
                      "llama3_1": "tokenizers/llama3_1", "qwen3": "tokenizers/qwen3"}


def whitespace_fixture():
    import tokenizers as tk
    import transformers

    cases = []
    for name, rel in FIXTURE_TOKENIZERS.items():
        if not (DATA / rel).exists():
            pytest.skip(f"test data not found at {DATA / rel} (set SLUICE_TEST_DATA)")
        ref = reference(DATA / rel)
        for text in WHITESPACE:
            ids = ref.encode([text], True)[0]
            cases.append({"tokenizer": name, "text": text, "ids": ids, "ids_plain": ref.encode([text], False)[0],
                          "decoded": ref.decode(ids, False), "decoded_skip": ref.decode(ids, True)})
    return {
        "about": (f"Whitespace and special-token cases (WHITESPACE in tests/integration/"
                  f"test_tokenizer_conformance.py) with what transformers {transformers.__version__} (tokenizers "
                  f"{tk.__version__}) gives: ids = AutoTokenizer.from_pretrained(<data>/<path>).encode(text), "
                  "ids_plain = the same with add_special_tokens=False, decoded and decoded_skip = decode(ids) "
                  "with skip_special_tokens False and True. Written by test_whitespace_fixture_is_current "
                  "with SLUICE_WRITE_FIXTURES=1; read by tests/unit/tokenizer/test_tok_whitespace.c."),
        "tokenizers": FIXTURE_TOKENIZERS,
        "cases": cases,
    }


def test_whitespace_fixture_is_current():
    """The fixture the C unit test reads is what transformers says today."""
    want = whitespace_fixture()
    if os.environ.get("SLUICE_WRITE_FIXTURES") == "1":
        rows = ",\n".join("  " + json.dumps(c, ensure_ascii=False) for c in want["cases"])
        FIXTURE.write_text(f'{{\n "about": {json.dumps(want["about"])},\n "tokenizers": '
                           f'{json.dumps(want["tokenizers"])},\n "cases": [\n{rows}\n ]\n}}\n', encoding="utf-8")
    have = json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert have["cases"] == want["cases"], "tests/fixtures/tokenizer_whitespace.json is stale: regenerate it"


def test_fuzz_bad_lines_answer_errors_and_continue():
    path, _ = paths(CASES[2])
    rng = random.Random(3)
    lines = []
    for _ in range(200):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 30))).replace(b"\n", b"")
        lines.append(raw)
    lines += [b'"fine"', b"[1,2,3]", b"{}", b"", b'"unterminated', b"123"]
    args = [worker(), "tokenize", "--tokenizer", path]
    out = subprocess.run(args, input=b"".join(line + b"\n" for line in lines), capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = out.stdout.decode("utf-8").split("\n")[:-1]
    assert len(rows) == len(lines)
    for line, row in zip(lines, rows):
        value = json.loads(row)
        try:
            is_string = isinstance(json.loads(line.decode("utf-8")), str)
        except (UnicodeDecodeError, ValueError):
            is_string = False
        if is_string:
            assert isinstance(value, list)
        else:
            assert isinstance(value, dict) and "error" in value, (line, row)

    args = [worker(), "detokenize", "--tokenizer", path]
    bad = [b"[1, -5]", b"[99999999]", b'["a"]', b"{", b"[1, 2.5]", b"[22557]"]
    out = subprocess.run(args, input=b"".join(b + b"\n" for b in bad), capture_output=True, timeout=60)
    rows = [json.loads(r) for r in out.stdout.decode("utf-8").split("\n")[:-1]]
    assert [isinstance(r, dict) and "error" in r for r in rows] == [True] * 5 + [False]
    assert rows[-1] == "Hello"


def test_unreadable_tokenizer_names_the_file(tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    out = subprocess.run([worker(), "tokenize", "--tokenizer", str(missing)], input=b'"x"\n',
                         capture_output=True, timeout=30)
    assert out.returncode == 1
    assert str(missing) in out.stderr.decode()
    broken = tmp_path / "tokenizer.json"
    broken.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}')
    out = subprocess.run([worker(), "detokenize", "--tokenizer", str(broken)], input=b"[0]\n",
                         capture_output=True, timeout=30)
    assert out.returncode == 1
    err = out.stderr.decode()
    assert str(broken) in err and "model.merges[0]" in err, err


def variants():
    """tokenizer.json pipelines no shipped model uses, built on stories260K's small vocabulary,
    so that every normalizer, pre-tokenizer, decoder and added-token option is checked."""
    meta = lambda scheme, split: {  # noqa: E731
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": split},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
    }
    out = {f"metaspace-{s}-{p}": meta(s, p) for s in ("always", "first", "never") for p in (True, False)}
    for each in (True, False):
        out[f"digits-{each}-whitespacesplit"] = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": each}, {"type": "WhitespaceSplit"}]}}
    out["whitespace-strip-nfc-regex"] = {
        "pre_tokenizer": {"type": "Whitespace"},
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Strip", "strip_left": True, "strip_right": True}, {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": "▁"}]}}
    for beh in ("Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"):
        for inv in (False, True):
            out[f"split-{beh}-{inv}"] = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\s+|\\d"}, "behavior": beh, "invert": inv},
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}]},
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}}
    for beh in ("Isolated", "Contiguous", "MergedWithNext"):
        out[f"punctuation-{beh}"] = {"pre_tokenizer": {"type": "Punctuation", "behavior": beh}}
    out["bert-pre-tokenizer"] = {"pre_tokenizer": {"type": "BertPreTokenizer"}}
    out["char-delimiter"] = {"pre_tokenizer": {"type": "CharDelimiterSplit", "delimiter": "e"}}
    out["split-string"] = {"pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                                             "behavior": "MergedWithNext", "invert": False}}
    out["no-decoder"] = {"decoder": None}
    for form in ("NFD", "NFKC", "NFKD", "Lowercase"):
        out[f"normalizer-{form}"] = {"normalizer": {"type": "Sequence", "normalizers": [
            {"type": form}, {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}
    out["normalizer-nfd-stripaccents-lowercase"] = {"normalizer": {"type": "Sequence", "normalizers": [
        {"type": "NFD"}, {"type": "StripAccents"}, {"type": "Lowercase"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}}
    out["added-lstrip-rstrip"] = {"added_tokens+": {"id": 512, "content": "Lily", "single_word": False,
                                                    "lstrip": True, "rstrip": True, "normalized": False,
                                                    "special": False}}
    out["added-normalized"] = {"added_tokens+": {"id": 512, "content": "▁park", "single_word": False,
                                                 "lstrip": False, "rstrip": False, "normalized": True,
                                                 "special": True}}
    out["added-single-word"] = {"added_tokens+": {"id": 512, "content": "an", "single_word": True,
                                                  "lstrip": False, "rstrip": False, "normalized": False,
                                                  "special": False}}
    out["added-single-word-new"] = {"added_tokens+": {"id": 512, "content": "zq", "single_word": True,
                                                      "lstrip": False, "rstrip": False, "normalized": False,
                                                      "special": False}}
    return out


VARIANTS = variants()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_pipeline_variants_match_reference(name, tmp_path):
    base = DATA / "models/stories260K/hf/tokenizer.json"
    if not base.exists():
        pytest.skip(f"test data not found at {base} (set SLUICE_TEST_DATA)")
    j = json.loads(base.read_text(encoding="utf-8"))
    for key, value in VARIANTS[name].items():
        if key == "added_tokens+":
            j["added_tokens"].append(value)
        else:
            j[key] = value
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    ref = tokenizers.Tokenizer.from_file(str(path))
    texts = CORPUS + random_strings(13, 200) + [
        "Lily and an ant ran to the park.", "Lily,Lily  Lily\tan,an", "\u00e9an an\u00e9 \u65e5an\u672c _an an_ 1an",
        "\u3000Lily\u3000\u00a0x", "\u2028 an \u0301an an\u0301", "an", "Lily",
        "zq xzq zqx _zq zq_ 1zq zq\u00b2 \u00e9zq zq\u0301 \u65e5zq \u2160zq zq\u200d (zq) zq."]
    for add_special in (True, False):
        want = [e.ids for e in ref.encode_batch(texts, add_special_tokens=add_special)]
        got = encode(str(path), texts, add_special)
        for text, g, w in zip(texts, got, want):
            assert g == w, f"{name}: {text!r}"
    for skip in (True, False):
        for ids, d in zip(want, decode(str(path), want, skip)):
            assert d == ref.decode(ids, skip_special_tokens=skip), f"{name} skip={skip}: {ids}"


def decoder_variants():
    """Decoder pipelines on stories260K's vocabulary that no shipped model uses (the streaming
    detokenizer's unit test runs the same shapes): steps on token lists and on the fused
    string, a "<0xNN>" made by fusing, Metaspace's first token, ByteLevel on raw text.
    (Strip with a stop count is left out: tokenizers panics on it for an empty string.)"""
    rep = lambda pat, content: {"type": "Replace", "pattern": {"String": pat}, "content": content}  # noqa: E731
    meta = lambda scheme: {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme,  # noqa: E731
                           "split": True}
    strip = {"type": "Strip", "content": " ", "start": 2, "stop": 0}
    bf, fuse = {"type": "ByteFallback"}, {"type": "Fuse"}
    bl = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    seq = lambda *steps: {"type": "Sequence", "decoders": list(steps)}  # noqa: E731
    return {
        "fuse-then-bytefallback-metaspace": seq(fuse, bf, meta("first")),
        "fuse-then-replaces": seq(fuse, rep("\u2581t", "T"), rep("he", "HE"), rep("ee", "3"), bf),
        "bytefallback-fuse-bytelevel": seq(bf, fuse, bl),
        "metaspace-always": seq(meta("always"), bf, fuse),
        "metaspace-never": seq(meta("never"), bf),
        "replacement-pairs": seq(rep("\u2581", "_"), bf, rep("\ufffd\ufffd", "X")),
        "fused-strip-start": seq(rep("\u2581", " "), bf, fuse, strip),
        "bytelevel-alone": bl,
    }


@pytest.mark.parametrize("name", sorted(decoder_variants()))
def test_decoder_variants_decode_random_ids(name, tmp_path):
    base = DATA / "models/stories260K/hf/tokenizer.json"
    if not base.exists():
        pytest.skip(f"test data not found at {base} (set SLUICE_TEST_DATA)")
    j = json.loads(base.read_text(encoding="utf-8"))
    j["decoder"] = decoder_variants()[name]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    ref = tokenizers.Tokenizer.from_file(str(path))
    rng = random.Random(zlib.crc32(name.encode()))
    # Half byte tokens (ids 3..258), so that runs of them are common, valid or not.
    id_lists = [[rng.randrange(3, 259) if rng.random() < 0.5 else rng.randrange(512)
                 for _ in range(rng.randint(0, 20))] for _ in range(400)]
    for skip in (True, False):
        for ids, d in zip(id_lists, decode(str(path), id_lists, skip)):
            assert d == ref.decode(ids, skip_special_tokens=skip), f"{name} skip={skip}: {ids}"


NORMALIZER_ORACLES = {
    "NFC": lambda t: unicodedata.normalize("NFC", t),
    "NFD": lambda t: unicodedata.normalize("NFD", t),
    "NFKC": lambda t: unicodedata.normalize("NFKC", t),
    "NFKD": lambda t: unicodedata.normalize("NFKD", t),
    # Rust's char::to_lowercase, one character at a time, as Hugging Face's Lowercase.
    "Lowercase": lambda t: "".join(c.lower() for c in t),
    "StripAccents": lambda t: "".join(c for c in t if not unicodedata.category(c).startswith("M")),
}


@pytest.mark.parametrize("form", sorted(NORMALIZER_ORACLES))
def test_unicode_normalizers_match_unicodedata(form, tmp_path):
    """Every code point of the BMP and beyond, and random combining sequences, through one
    normalizer against Python's unicodedata (the tables were generated from it):
    stories260K's vocabulary with that normalizer alone and byte fallback decodes back to
    exactly the normalized text."""
    base = DATA / "models/stories260K/hf/tokenizer.json"
    if not base.exists():
        pytest.skip(f"test data not found at {base} (set SLUICE_TEST_DATA)")
    j = json.loads(base.read_text(encoding="utf-8"))
    j["normalizer"] = {"type": form}
    j["decoder"] = {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]}
    j["added_tokens"] = []
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    cps = [c for c in range(0x20, 0x30000) if not 0xD800 <= c < 0xE000 and c not in (0x2028, 0x2029)]
    texts = ["".join(chr(c) for c in cps[i:i + 400]) for i in range(0, len(cps), 400)]
    rng = random.Random(5)
    marks = [chr(c) for c in list(range(0x300, 0x370)) + [0x3099, 0x309A, 0x0B3E, 0x0CD5, 0x1D165, 0x110BA]]
    bases = list("aeiouAEOUnNcCsSzZ") + [chr(c) for c in (0x1100, 0x1161, 0x11A8, 0xAC00, 0x304B, 0x0B47,
                                                          0x0CC6, 0x11099, 0x3A3, 0x130, 0xFB01, 0x2460)]
    for _ in range(300):
        texts.append("".join(rng.choice(bases) + "".join(rng.choice(marks) for _ in range(rng.randint(0, 4)))
                             for _ in range(rng.randint(1, 12))))
    ids = encode(str(path), texts, False)
    back = decode(str(path), ids, False)
    oracle = NORMALIZER_ORACLES[form]
    for text, b in zip(texts, back):
        assert b == oracle(text), f"{form}: first difference in {text[:20]!r}..."


def write_gguf(path, kvs):
    """A GGUF v3 file with metadata only (no tensors), enough for a tokenizer."""
    import struct

    def s(x):
        b = x.encode("utf-8")
        return struct.pack("<Q", len(b)) + b

    out = [b"GGUF", struct.pack("<IQQ", 3, 0, len(kvs))]
    for key, (kind, value) in kvs.items():
        out.append(s(key))
        if kind == "str":
            out.append(struct.pack("<I", 8) + s(value))
        elif kind == "u32":
            out.append(struct.pack("<II", 4, value))
        elif kind == "bool":
            out.append(struct.pack("<IB", 7, 1 if value else 0))
        elif kind == "str[]":
            out.append(struct.pack("<IIQ", 9, 8, len(value)) + b"".join(s(v) for v in value))
        elif kind == "i32[]":
            out.append(struct.pack("<IIQ", 9, 5, len(value)) + struct.pack(f"<{len(value)}i", *value))
        elif kind == "f32[]":
            out.append(struct.pack("<IIQ", 9, 6, len(value)) + struct.pack(f"<{len(value)}f", *value))
    data = b"".join(out)
    data += b"\0" * (-len(data) % 32)
    path.write_bytes(data)


def gguf_from_tokenizer_json(src, dst, pre, add_bos):
    """Converts a byte-level tokenizer.json the way llama.cpp's converter does: tokens by id,
    special added tokens as control (3), other added tokens as user-defined (4)."""
    j = json.loads(src.read_text(encoding="utf-8"))
    vocab = dict(j["model"]["vocab"])
    types = {}
    for a in j["added_tokens"]:
        vocab[a["content"]] = a["id"]
        types[a["id"]] = 3 if a["special"] else 4
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    for tok, i in vocab.items():
        tokens[i] = tok
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    kvs = {
        "general.architecture": ("str", "llama"),
        "tokenizer.ggml.model": ("str", "gpt2"),
        "tokenizer.ggml.pre": ("str", pre),
        "tokenizer.ggml.tokens": ("str[]", tokens),
        "tokenizer.ggml.token_type": ("i32[]", [types.get(i, 1) for i in range(n)]),
        "tokenizer.ggml.merges": ("str[]", merges),
        "tokenizer.ggml.add_bos_token": ("bool", add_bos),
    }
    bos = next((a["id"] for a in j["added_tokens"] if a["content"] in ("<|begin_of_text|>",)), None)
    if bos is not None:
        kvs["tokenizer.ggml.bos_token_id"] = ("u32", bos)
    write_gguf(dst, kvs)


# SmolLM2's and GPT-2's pipelines, on Qwen3's byte-level vocabulary.
SMOLLM = {"normalizer": None, "post_processor": None, "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}}
GPT2 = {"normalizer": None, "post_processor": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}}


@pytest.mark.parametrize("name,pre,add_bos,edit", [
    ("llama3_1", "llama-bpe", True, None), ("qwen3", "qwen2", False, None),
    ("qwen3", "smollm", False, SMOLLM), ("qwen3", "gpt-2", False, GPT2)])
def test_byte_level_gguf_matches_tokenizer_json(name, pre, add_bos, edit, tmp_path):
    src = DATA / "tokenizers" / name / "tokenizer.json"
    if not src.exists():
        pytest.skip(f"test data not found at {src} (set SLUICE_TEST_DATA)")
    if edit:
        j = json.loads(src.read_text(encoding="utf-8"))
        j.update(edit)
        src = tmp_path / "tokenizer.json"
        src.write_text(json.dumps(j, ensure_ascii=False), encoding="utf-8")
    dst = tmp_path / f"{name}.gguf"
    gguf_from_tokenizer_json(src, dst, pre, add_bos)
    ref = tokenizers.Tokenizer.from_file(str(src))
    texts = CORPUS + random_strings(17, 300)
    for add_special in (True, False):
        want = [e.ids for e in ref.encode_batch(texts, add_special_tokens=add_special)]
        got = encode(str(dst), texts, add_special)
        for text, g, w in zip(texts, got, want):
            assert g == w, f"{name} gguf: {text!r}"
    for skip in (True, False):
        for ids, d in zip(want, decode(str(dst), want, skip)):
            assert d == ref.decode(ids, skip_special_tokens=skip), f"{name} gguf skip={skip}: {ids}"


def test_sentencepiece_gguf_matches_llama2_tokenizer_json(tmp_path):
    """Llama 2's 32k vocabulary as a "llama" GGUF (tokens, scores, token types): scores follow
    the order of the merges, as SentencePiece's do, so merging by score must give the ids the
    merges list gives."""
    import re

    src = DATA / "tokenizers" / "llama2" / "tokenizer.json"
    if not src.exists():
        pytest.skip(f"test data not found at {src} (set SLUICE_TEST_DATA)")
    j = json.loads(src.read_text(encoding="utf-8"))
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for tok, i in vocab.items():
        tokens[i] = tok
    first_rank = {}
    for r, m in enumerate(j["model"]["merges"]):
        a, b = m.split(" ") if isinstance(m, str) else m
        first_rank.setdefault(a + b, r)
    special = {a["content"]: a["id"] for a in j["added_tokens"]}
    types, scores = [], []
    for i, tok in enumerate(tokens):
        kind = 2 if tok == "<unk>" else 3 if tok in special else 6 if re.fullmatch(r"<0x[0-9A-F]{2}>", tok) else 1
        types.append(kind)
        scores.append(-float(first_rank.get(tok, 1_000_000 + i)) if kind == 1 else 0.0)
    dst = tmp_path / "llama2.gguf"
    write_gguf(dst, {
        "general.architecture": ("str", "llama"),
        "tokenizer.ggml.model": ("str", "llama"),
        "tokenizer.ggml.tokens": ("str[]", tokens),
        "tokenizer.ggml.scores": ("f32[]", scores),
        "tokenizer.ggml.token_type": ("i32[]", types),
        "tokenizer.ggml.bos_token_id": ("u32", 1),
        "tokenizer.ggml.eos_token_id": ("u32", 2),
        "tokenizer.ggml.unknown_token_id": ("u32", 0),
    })
    ref = tokenizers.Tokenizer.from_file(str(src))
    texts = CORPUS + random_strings(19, 300)
    for add_special in (True, False):
        want = [e.ids for e in ref.encode_batch(texts, add_special_tokens=add_special)]
        got = encode(str(dst), texts, add_special)
        for text, g, w in zip(texts, got, want):
            assert g == w, f"llama2 gguf: {text!r}"
    for skip in (True, False):
        for ids, d in zip(want, decode(str(dst), want, skip)):
            assert d == ref.decode(ids, skip_special_tokens=skip), f"llama2 gguf skip={skip}: {ids}"
