"""FastChat's own OpenAI API server (pip fschat: python -m fastchat.serve.openai_api_server) in
front of our controller and worker, called with the openai client. FastChat's server asks our
controller for the worker, asks the worker for its conversation template, builds the prompt
with FastChat's Conversation and reads our /worker_generate(_stream) answers, logprobs
included. Its answers must be what our worker gives for the same request directly."""
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from openai import OpenAI

from sluice_integration_helpers import DATA, Proc, binary, free_port, need_stories, start_controller, start_worker

MODEL = "stories-chat"
# A Zephyr-style template: stories260K has none, and its vocabulary spells these markers out.
TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
SYSTEM_CHAT = [{"role": "system", "content": "You tell stories."},
               {"role": "user", "content": "Tell me about a cat."},
               {"role": "assistant", "content": "Once there was a cat."},
               {"role": "user", "content": "And then?"}]
PROMPT = "Once upon a time"
ORACLE = Path(__file__).resolve().parent / "fastchat_oracle.py"


def wait_for_model(controller_url, model, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if model in requests.post(controller_url + "/list_models", timeout=5).json()["models"]:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{model} did not register with {controller_url}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Our controller and a worker on stories260K with a chat template, FastChat's API server."""
    tmp = tmp_path_factory.mktemp("fastchat")
    template = tmp / "zephyr.jinja"
    template.write_text(TEMPLATE)
    started = []
    try:
        port = free_port()
        controller = Proc([binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(port)],
                          port, "controller-interop")
        started.append(controller)
        controller.wait_http("/health")
        port = free_port()
        worker = Proc([binary("sluice-worker"), "--model-path", str(need_stories() / "hf"), "--device", "cpu",
                       "--threads", "1", "--host", "127.0.0.1", "--port", str(port), "--model-names", MODEL,
                       "--chat-template", str(template), "--controller-address", controller.url],
                      port, "worker-interop")
        started.append(worker)
        worker.wait_http("/health", timeout=60)
        wait_for_model(controller.url, MODEL)
        port = free_port()
        fastchat = Proc([sys.executable, "-m", "fastchat.serve.openai_api_server", "--controller-address",
                         controller.url, "--host", "127.0.0.1", "--port", str(port)],
                        port, "fastchat-api", env={"LOGDIR": str(tmp)})
        started.append(fastchat)
        fastchat.wait_http("/docs", timeout=60)
        yield {"controller": controller, "worker": worker, "fastchat": fastchat,
               "client": OpenAI(base_url=fastchat.url + "/v1", api_key="unused", max_retries=0, timeout=60)}
    finally:
        for p in reversed(started):
            p.kill()


def ours(worker, **body):
    """Our worker's native answer: text, token ids, logprobs and usage."""
    r = requests.post(worker.url + "/generate", json=body, timeout=60)
    assert r.status_code == 200, r.text
    frames = [json.loads(line) for line in r.text.splitlines() if line]
    return {"text": "".join(f["text"] for f in frames), "ids": [i for f in frames for i in f["token_ids"]],
            "logprobs": [e for f in frames for e in f.get("logprobs", [])], "usage": frames[-1]["usage"],
            "finish_reason": frames[-1]["finish_reason"]}


def test_models(stack):
    assert [m.id for m in stack["client"].models.list().data] == [MODEL]


def test_chat_completion_is_our_answer(stack):
    r = stack["client"].chat.completions.create(model=MODEL, messages=SYSTEM_CHAT, max_tokens=12, temperature=0)
    want = ours(stack["worker"], messages=SYSTEM_CHAT, max_tokens=12, temperature=0)
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want["text"] and want["text"].strip()
    assert r.choices[0].finish_reason == want["finish_reason"]
    assert r.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == want["usage"]["completion_tokens"]


def test_streaming_chat(stack):
    chunks = list(stack["client"].chat.completions.create(model=MODEL, messages=SYSTEM_CHAT, max_tokens=12,
                                                          temperature=0, stream=True))
    want = ours(stack["worker"], messages=SYSTEM_CHAT, max_tokens=12, temperature=0)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want["text"]
    assert chunks[-1].choices[0].finish_reason == want["finish_reason"]
    assert len(chunks) > 3, "the answer came in pieces"


def check_logprobs(lp, text, start, want, top):
    """FastChat's completion logprobs (OpenAI's legacy shape) against our worker's."""
    assert lp.tokens == [e["token"] for e in want]
    assert lp.token_logprobs == pytest.approx([e["logprob"] for e in want], abs=1e-5)
    offsets = [start + len("".join(lp.tokens[:i])) for i in range(len(lp.tokens))]
    assert lp.text_offset == offsets
    assert text[start:] == "".join(lp.tokens)
    for alternatives, entry in zip(lp.top_logprobs, want):
        assert len(alternatives) == top
        assert alternatives[entry["token"]] == pytest.approx(entry["logprob"], abs=1e-5)


def test_completion_with_logprobs(stack):
    c = stack["client"]
    want = ours(stack["worker"], prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2)
    assert r.choices[0].text == want["text"] and want["text"].strip()
    check_logprobs(r.choices[0].logprobs, r.choices[0].text, 0, want["logprobs"], 2)
    r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=2, echo=True)
    assert r.choices[0].text == PROMPT + want["text"]
    # Echoed, the prompt's tokens lead, the first without a logprob, as FastChat's own worker
    # gives them (fastchat/serve/inference.py); the generated ones follow as without echo.
    lp, n_prompt = r.choices[0].logprobs, want["usage"]["prompt_tokens"]
    assert len(lp.tokens) == n_prompt + 6 and lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] == {} and lp.text_offset[0] == 0
    assert all(x <= 0 for x in lp.token_logprobs[1:n_prompt])
    generated = type(lp)(tokens=lp.tokens[n_prompt:], token_logprobs=lp.token_logprobs[n_prompt:],
                         top_logprobs=lp.top_logprobs[n_prompt:], text_offset=lp.text_offset[n_prompt:])
    check_logprobs(generated, r.choices[0].text, len(PROMPT), want["logprobs"], 2)


def test_streaming_completion_with_logprobs(stack):
    """FastChat's stream frames carry the logprobs of every token so far, as its text."""
    want = ours(stack["worker"], prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1)
    chunks = list(stack["client"].completions.create(model=MODEL, prompt=PROMPT, max_tokens=6, temperature=0,
                                                     logprobs=1, stream=True))
    text = "".join(c.choices[0].text for c in chunks)
    assert text == want["text"]
    check_logprobs(chunks[-1].choices[0].logprobs, text, 0, want["logprobs"], 1)


def test_embeddings_through_fastchat(stack):
    """FastChat's /v1/embeddings calls our worker's /worker_get_embeddings with its own shapes."""
    texts = ["Once upon a time", "The dog ran to the park"]
    r = stack["client"].embeddings.create(model=MODEL, input=texts, encoding_format="float")
    want = requests.post(stack["worker"].url + "/embed", json={"input": texts}, timeout=60).json()
    assert [d.index for d in r.data] == [0, 1]
    for got, ref in zip(r.data, want["data"]):
        assert got.embedding == pytest.approx(ref["embedding"], abs=1e-6)
    assert r.usage.prompt_tokens == want["usage"]["prompt_tokens"]


def fastchat(command, **args):
    """Runs FastChat's own code (fastchat_oracle.py) and returns its answer."""
    r = subprocess.run([sys.executable, str(ORACLE), command, json.dumps(args)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    return json.loads(r.stdout)


def tokens(worker, **body):
    r = requests.post(worker.url + "/tokenize", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def tiny_model(tmp_path, tokenizer, **config):
    d = tmp_path / tokenizer
    shutil.copytree(DATA / "tokenizers" / tokenizer, d)
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "tie_word_embeddings": True, **config}))
    return d


# (model directory, worker flags): a Jinja template with a BOS of its own (the tokenizer adds
# one to prompts, so FastChat's must not hold another), ChatML (Qwen3's template), Llama 3,
# and the built-in "User: ..." transcript of a model with no template.
MODELS = {
    "zephyr": lambda tmp: (need_stories() / "hf", ["--chat-template", str(zephyr_file(tmp))]),
    "qwen3": lambda tmp: (tiny_model(tmp, "qwen3", vocab_size=151936, architectures=["Qwen3ForCausalLM"],
                                     model_type="qwen3"), ["--load-format", "dummy"]),
    "llama3_1": lambda tmp: (tiny_model(tmp, "llama3_1", vocab_size=128256), ["--load-format", "dummy"]),
    "plain": lambda tmp: (need_stories() / "hf", []),
}


def zephyr_file(tmp):
    path = tmp / "zephyr.jinja"
    path.write_text(TEMPLATE)
    return path


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fastchat_builds_our_prompts(procs, tmp_path, name):
    """Given a system message FastChat's prompt is ours, token for token. Without one FastChat
    writes the conversation's default system message, which is the template's own where it has
    one, else empty: the prompt is then ours for that system message."""
    model_dir, flags = MODELS[name](tmp_path)
    if not model_dir.exists():
        pytest.skip(f"{model_dir} is absent")
    worker = start_worker(procs, model_dir, "--model-names", name, "--kv-cache-tokens", "1024", *flags)
    chats = [SYSTEM_CHAT, SYSTEM_CHAT[1:], SYSTEM_CHAT[1:2]]
    got = fastchat("prompts", worker=worker.url, model=name, conversations=chats)
    conv = got["conv"]
    assert tokens(worker, prompt=got["prompts"][0]) == tokens(worker, messages=SYSTEM_CHAT)
    for chat, prompt in zip(chats[1:], got["prompts"][1:]):
        with_default = [{"role": "system", "content": conv["system_message"]}] + chat
        assert tokens(worker, prompt=prompt) == tokens(worker, messages=with_default), prompt
    # The template's end of turn ends FastChat's generations too.
    if name != "plain":
        assert conv["stop_token_ids"], conv


def test_fastchat_worker_registers_with_our_controller(procs):
    """FastChat's own worker code (BaseModelWorker) registers and heartbeats with our controller,
    which then dispatches its model to it."""
    controller = start_controller(procs)
    address = f"http://127.0.0.1:{free_port()}"
    assert fastchat("register", controller=controller.url, address=address, model="vicuna-7b")["registered"]
    assert requests.post(controller.url + "/list_models", timeout=5).json()["models"] == ["vicuna-7b"]
    got = requests.post(controller.url + "/get_worker_address", json={"model": "vicuna-7b"}, timeout=5).json()
    assert got["address"] == address
