"""The worker renders chat messages with the model's own Jinja chat template, exactly as
transformers' apply_chat_template would, and tokenizes the result without adding special
tokens. A random-weight Qwen3 model with the real Qwen3 tokenizer and template stands in for
a chat model; the oracle is jinja2 with HF's settings plus the `tokenizers` package."""
import json
import shutil

import pytest
import requests
from tokenizers import Tokenizer

from conftest import DATA, need_stories, start_worker
from test_chat_template_conformance import oracle

QWEN3 = DATA / "tokenizers" / "qwen3"


@pytest.fixture
def qwen3_worker(procs, tmp_path):
    if not QWEN3.exists():
        pytest.skip(f"{QWEN3} is absent")
    d = tmp_path / "qwen3-tiny"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(QWEN3 / f, d / f)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 151936,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": 151645}))
    return start_worker(procs, d, "--load-format", "dummy", "--kv-cache-tokens", "4096"), d


CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "Hello, who are you?"}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And 3+3?"}]},
    {"messages": [{"role": "user", "content": "Think about it."}],
     "chat_template_kwargs": {"enable_thinking": False}},
    {"messages": [{"role": "user", "content": "Weather in Paris?"}],
     "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                                 "parameters": {"type": "object", "properties": {
                                                     "city": {"type": "string"}}}}}]},
]


@pytest.mark.parametrize("conv", CONVERSATIONS)
def test_chat_prompt_equals_apply_chat_template(qwen3_worker, conv):
    worker, model_dir = qwen3_worker
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    request = {"messages": conv["messages"], "add_generation_prompt": True,
               **({"tools": conv["tools"]} if "tools" in conv else {}),
               **conv.get("chat_template_kwargs", {})}
    text = oracle(cfg["chat_template"], request, bos="", eos=cfg.get("eos_token", ""))
    assert isinstance(text, str), text
    want = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    r = requests.post(worker.url + "/tokenize", json=conv, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["tokens"] == want


def test_chat_generation_and_errors(qwen3_worker):
    worker, _ = qwen3_worker
    r = requests.post(worker.url + "/generate", json={
        "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0,
        "ignore_eos": True}, timeout=60)
    frames = [json.loads(l) for l in r.text.splitlines() if l]
    assert sum(len(f["token_ids"]) for f in frames) == 4
    # A message the template cannot take is the client's error, with the field named.
    r = requests.post(worker.url + "/generate", json={"messages": [{"role": "user"}], "max_tokens": 4}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "messages"


def test_logprobs_carry_exact_bytes(qwen3_worker):
    """Every generated token has a logprob entry, also tokens holding part of a character
    (common in a byte-level vocabulary): their text shows U+FFFD, "bytes" the exact bytes."""
    worker, _ = qwen3_worker
    r = requests.post(worker.url + "/generate", json={
        "prompt": "Hello", "max_tokens": 32, "temperature": 1.0, "seed": 1, "logprobs": 20,
        "ignore_eos": True}, timeout=60)
    frames = [json.loads(l) for l in r.text.splitlines() if l]
    partial = 0
    for f in frames:
        assert len(f["logprobs"]) == len(f["token_ids"])
        for entry in f["logprobs"]:
            for e in [entry] + entry["top_logprobs"]:
                raw = bytes(e["bytes"])
                assert raw.decode("utf-8", errors="replace") == e["token"]
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError:
                    partial += 1
    assert partial > 0, "expected some partial-character tokens among the alternatives"


# --chat-template takes a Jinja file as vLLM's does, whatever it starts with: the second
# template opens with a literal brace, which a *.jinja file may well do.
JINJA_TEMPLATES = {
    "zephyr.jinja": "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n"
                    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    "braces.jinja": "{turns: {% for m in messages %}{{ m.role }}={{ m.content }}; {% endfor %}}"
                    "{% if add_generation_prompt %} assistant={% endif %}",
    "no-extension": "{% for m in messages %}[{{ m.role | upper }}] {{ m.content }}\n{% endfor %}"
                    "{% if add_generation_prompt %}[ASSISTANT]{% endif %}",
}


@pytest.mark.parametrize("name", sorted(JINJA_TEMPLATES))
def test_chat_template_flag_takes_jinja_files(procs, tmp_path, name):
    source = JINJA_TEMPLATES[name]
    path = tmp_path / name
    path.write_text(source)
    model = need_stories() / "hf"
    worker = start_worker(procs, model, "--chat-template", str(path))
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    for conv in CONVERSATIONS[:2]:
        request = {"messages": conv["messages"], "add_generation_prompt": True}
        text = oracle(source, request, bos=cfg["bos_token"], eos=cfg["eos_token"])
        assert isinstance(text, str), text
        r = requests.post(worker.url + "/tokenize", json=conv, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == tok.encode(text, add_special_tokens=False).ids, text
