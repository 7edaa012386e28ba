"""Structured output, tool calls and reasoning through the whole trio, with the official OpenAI
client: a random-weight Qwen3 model (the real Qwen3 tokenizer and chat template, whose tool
syntax is Hermes's <tool_call>) on a CPU worker started with --reasoning-parser qwen3. Random
weights pick tokens blindly, so whatever comes out is what the grammar allowed: it must always
parse and validate. Where a test needs the model to write something particular (a tool call
in auto mode, a <think> block), a guided grammar makes it."""
import json
import time
from typing import List, Literal

import jsonschema
import pydantic
import pytest

from conftest import DATA, Proc, binary, free_port

openai = pytest.importorskip("openai")

QWEN3 = DATA / "tokenizers" / "qwen3"
MODEL = "qwen3-tiny"

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city over the next days",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "units": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "days"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time now"}}
TOOLS = [WEATHER, CLOCK]
# What the grammar enforces of get_weather's parameters (minimum and maximum it cannot, and
# drops for a function that is not strict).
WEATHER_SHAPE = {**WEATHER["function"]["parameters"], "additionalProperties": False}
WEATHER_SHAPE["properties"] = {**WEATHER_SHAPE["properties"], "days": {"type": "integer"}}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    if not QWEN3.exists():
        pytest.skip(f"{QWEN3} is absent")
    d = tmp_path_factory.mktemp("models") / MODEL
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes((QWEN3 / f).read_bytes())
    (d / "config.json").write_text(json.dumps({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 64,
        "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 151936,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": True, "bos_token_id": None, "eos_token_id": 151645}))
    started = []
    try:
        port = free_port()
        ctl = Proc([binary("sluice-controller"), "--host", "127.0.0.1", "--port", str(port)], port, "controller")
        started.append(ctl)
        ctl.wait_http("/health")
        port = free_port()
        worker = Proc([binary("sluice-worker"), "--model-path", str(d), "--load-format", "dummy", "--device", "cpu",
                       "--host", "127.0.0.1", "--port", str(port), "--threads", "2", "--kv-cache-tokens", "16384",
                       "--controller-address", ctl.url, "--reasoning-parser", "qwen3"], port, "worker")
        started.append(worker)
        worker.wait_http("/health", timeout=120)
        port = free_port()
        gw = Proc([binary("sluice-gateway"), "--host", "127.0.0.1", "--port", str(port), "--controller-address",
                   ctl.url], port, "gateway")
        started.append(gw)
        gw.wait_http("/health")
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        deadline = time.time() + 30
        while not any(m.id == MODEL for m in c.models.list().data):
            assert time.time() < deadline, "the worker never registered"
            time.sleep(0.1)
        yield c
    finally:
        for p in started:
            p.kill()


def ask(**kw):
    return {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "max_tokens": 1500, **kw}


# ---- structured output -----------------------------------------------------------------------

class Step(pydantic.BaseModel):
    ok: bool
    note: pydantic.constr(max_length=6)


class Verdict(pydantic.BaseModel):
    verdict: Literal["yes", "no", "maybe"]
    confidence: int
    steps: pydantic.conlist(Step, max_items=2)


def test_parse_with_a_pydantic_model(client):
    for seed in range(4):
        completion = client.beta.chat.completions.parse(response_format=Verdict, seed=seed, **ask())
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice
        assert isinstance(choice.message.parsed, Verdict), choice.message.content
        assert len(choice.message.parsed.steps) <= 2


def test_json_object_and_json_schema_always_validate(client):
    schema = {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
        "score": {"anyOf": [{"type": "number"}, {"type": "null"}]}},
        "required": ["name", "tags", "score"], "additionalProperties": False}
    for seed in range(3):
        r = client.chat.completions.create(seed=seed, response_format={
            "type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}, **ask())
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    # json_object: any object. Random weights write long strings of random tokens, so many
    # outputs run to max_tokens; every one that ends is an object.
    done = 0
    for seed in range(16):
        r = client.chat.completions.create(seed=seed, response_format={"type": "json_object"}, **ask(max_tokens=200))
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)
            done += 1
            if done == 2:
                break
    assert done >= 1


def test_vllm_guided_fields_chat_and_completions(client):
    colours = ["red", "green", "deep blue"]
    r = client.chat.completions.create(seed=1, extra_body={"guided_choice": colours}, **ask())
    assert r.choices[0].message.content in colours
    r = client.chat.completions.create(seed=2, extra_body={"structured_outputs": {"choice": colours}}, **ask())
    assert r.choices[0].message.content in colours
    r = client.completions.create(model=MODEL, prompt="Call me at", max_tokens=40, seed=3,
                                  extra_body={"guided_regex": r"\+\d{2} \d{3}-\d{4}"})
    text = r.choices[0].text
    assert text[0] == "+" and text[3] == " " and text[7] == "-" and len(text) == 12, text
    r = client.chat.completions.create(seed=4, extra_body={"guided_grammar": 'root ::= "x" [0-9] [0-9]'}, **ask())
    assert r.choices[0].message.content[0] == "x" and r.choices[0].message.content[1:].isdigit()


def test_streamed_structured_output_equals_the_answer(client):
    params = ask(seed=9, response_format={"type": "json_schema", "json_schema": {
        "name": "v", "schema": Verdict.schema(), "strict": True}})
    whole = client.chat.completions.create(**params).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **params)
                       if c.choices)
    assert streamed == whole
    Verdict.parse_raw(whole)


def test_bad_constraints_are_400_naming_the_field(client):
    def refused(param, **kw):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(**ask(**kw))
        assert e.value.body["param"] == param, e.value.body
        return e.value.body["message"]

    # The worker's grammar engine names what it cannot enforce, and where.
    msg = refused("response_format", response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "object", "properties": {"a": {"type": "string", "pattern": "x+"}}}}})
    assert "pattern" in msg and "/properties/a" in msg
    refused("response_format", response_format={"type": "yaml"})
    refused("guided_choice", extra_body={"guided_choice": "red"})
    refused("guided_regex", extra_body={"guided_regex": "(unclosed"})
    refused("guided_grammar", response_format={"type": "json_object"}, extra_body={"guided_grammar": "root ::= \"a\""})
    refused("tool_choice", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    refused("tool_choice", tool_choice="required")
    refused("tools", tools=[{"type": "function", "function": {"name": "has space"}}])
    refused("tool_choice", tools=TOOLS, tool_choice="required", response_format={"type": "json_object"})
    # A strict function's schema must be enforceable in full.
    strict = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    assert "minimum" in refused("tools", tools=[strict], tool_choice="required")


# ---- tools -------------------------------------------------------------------------------------

def check_call(call, names=("get_weather", "get_time")):
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in names
    args = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(args, WEATHER_SHAPE)
    else:
        assert args == {}
    return call.function.name, args


def test_tool_choice_required_and_named_are_always_valid(client):
    for seed in range(4):
        r = client.chat.completions.create(seed=seed, tools=TOOLS, tool_choice="required", parallel_tool_calls=False,
                                           **ask())
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        check_call(choice.message.tool_calls[0])
    for name in ("get_weather", "get_time"):
        r = client.chat.completions.create(seed=5, tools=TOOLS, tool_choice={"type": "function", "function": {"name": name}},
                                           **ask())
        calls = r.choices[0].message.tool_calls
        assert len(calls) == 1 and calls[0].function.name == name
        check_call(calls[0])
    # Several calls when parallel calls are allowed (the default); each has its own id.
    counts = []
    for seed in range(3):
        r = client.chat.completions.create(seed=seed, tools=TOOLS, tool_choice="required", **ask(max_tokens=4000))
        if r.choices[0].finish_reason != "tool_calls":
            continue
        calls = r.choices[0].message.tool_calls
        assert len({c.id for c in calls}) == len(calls)
        for c in calls:
            check_call(c)
        counts.append(len(calls))
    assert counts and max(counts) > 1, counts


def test_the_calls_and_their_results_go_back_to_the_model(client):
    """The usual loop: the answer's assistant message (content null, tool_calls) and a tool
    message with the result are the next request's history (Qwen3's template reads content as a
    string; null is given to it as "")."""
    params = ask(seed=2, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_time"}})
    message = client.chat.completions.create(**params).choices[0].message
    history = params["messages"] + [message.to_dict(),
                                     {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "12:00"}]
    assert history[1]["content"] is None
    r = client.chat.completions.create(**{**params, "messages": history, "tool_choice": "none", "max_tokens": 5})
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.prompt_tokens > 0


def test_streamed_tool_calls_assembled_by_the_sdk(client):
    for seed in (11, 12):
        params = ask(seed=seed, tools=TOOLS, tool_choice="required", max_tokens=4000)
        whole = client.chat.completions.create(**params).choices[0]
        with client.beta.chat.completions.stream(**params) as stream:
            chunks = []
            for event in stream:
                if event.type == "chunk":
                    chunks.append(event.chunk)
            final = stream.get_final_completion().choices[0]
        assert final.finish_reason == whole.finish_reason == "tool_calls"
        got = [check_call(c) for c in final.message.tool_calls]
        assert got == [check_call(c) for c in whole.message.tool_calls]
        # OpenAI's shape: a call's first delta has its index, id and name; its arguments follow
        # in pieces.
        deltas = [d for c in chunks for ch in c.choices for d in (ch.delta.tool_calls or [])]
        firsts = [d for d in deltas if d.id]
        assert [d.index for d in firsts] == list(range(len(got)))
        assert all(d.function.name for d in firsts)
        assert len(deltas) > 2 * len(got), "arguments should stream in pieces"


def test_auto_tool_choice_parses_what_the_model_writes(client):
    # The model is made to write Qwen's tool-call syntax after some content; auto parses it.
    call = '{"name": "get_weather", "arguments": {"city": "Lima", "days": 3}}'
    grammar = 'root ::= "Let me look.\\n\\n<tool_call>\\n" ' + json.dumps(call) + ' "\\n</tool_call>"'
    params = ask(seed=1, tools=TOOLS, extra_body={"guided_grammar": grammar})
    r = client.chat.completions.create(**params).choices[0]
    assert r.finish_reason == "tool_calls"
    assert r.message.content == "Let me look."
    assert [check_call(c) for c in r.message.tool_calls] == [("get_weather", {"city": "Lima", "days": 3})]
    chunks = list(client.chat.completions.create(stream=True, **params))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Let me look."
    args = "".join(d.function.arguments or "" for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or []))
    assert json.loads(args) == {"city": "Lima", "days": 3}
    # No call written: plain content, finish "stop"; tool_choice none leaves the syntax as text.
    r = client.chat.completions.create(**ask(seed=2, tools=TOOLS, extra_body={"guided_choice": ["No tool needed."]}))
    assert r.choices[0].message.content == "No tool needed." and not r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "stop"
    r = client.chat.completions.create(**ask(seed=1, tools=TOOLS, tool_choice="none",
                                             extra_body={"guided_grammar": grammar}))
    assert "<tool_call>" in r.choices[0].message.content and not r.choices[0].message.tool_calls


# ---- reasoning -------------------------------------------------------------------------------------

def test_reasoning_content_split_off(client):
    params = ask(seed=3, extra_body={"guided_regex": r"<think>\n[a-z]{1,8}( [a-z]{1,8}){0,3}\n</think>\n\n(yes|no)"})
    r = client.chat.completions.create(**params).choices[0]
    message = json.loads(r.message.to_json())
    assert r.message.content in ("yes", "no"), message
    reasoning = message["reasoning_content"]
    assert reasoning.startswith("\n") and reasoning.endswith("\n") and reasoning.strip().replace(" ", "").isalpha()
    chunks = list(client.chat.completions.create(stream=True, **params))
    deltas = [json.loads(c.choices[0].delta.to_json()) for c in chunks if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == reasoning
    assert "".join(d.get("content") or "" for d in deltas) == r.message.content
