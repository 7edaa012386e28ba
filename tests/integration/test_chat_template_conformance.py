"""Chat templates: `sluice-worker chat-template` against jinja2 configured exactly as
transformers' apply_chat_template configures it (ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks and loopcontrols, its tojson override, raise_exception and
strftime_now). Covers the templates shipped in the test data's tokenizer_config.json files and
hand-written templates in the styles models ship (ChatML, Llama 2, Mistral, Gemma, Llama 3.1
with tools), plus small snippets for single constructs."""
import json
import subprocess
from datetime import datetime
from pathlib import Path

import jinja2
import jinja2.ext
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from conftest import DATA, binary


# --- the oracle: transformers' environment ------------------------------------------------
class GenerationTag(jinja2.ext.Extension):
    """transformers' AssistantTracker without the tracking: {% generation %} renders its body."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render", []), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def oracle_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, GenerationTag])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


ENV = oracle_env()

OWN_KEYS = ("messages", "tools", "add_generation_prompt")


def oracle(source, request, bos="", eos=""):
    """What apply_chat_template renders, or ('error', message) when the template raises."""
    variables = {k: v for k, v in request.items() if k not in OWN_KEYS}
    try:
        return ENV.from_string(source).render(
            messages=request.get("messages"), tools=request.get("tools"),
            add_generation_prompt=request.get("add_generation_prompt", False),
            bos_token=bos, eos_token=eos, **variables)
    except jinja2.exceptions.TemplateError as e:
        if type(e) is jinja2.exceptions.TemplateError:
            return ("error", str(e))
        return ("error", None)
    except Exception:  # noqa: BLE001 - any Python error is a render error for the comparison
        return ("error", None)


def ours(args, requests):
    """Runs the CLI once over all requests; one parsed output line per request."""
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    p = subprocess.run([binary("sluice-worker"), "chat-template", *args], input=stdin.encode(),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    lines = p.stdout.decode().splitlines()
    assert len(lines) == len(requests), p.stdout.decode() + p.stderr.decode()
    out = []
    for line in lines:
        v = json.loads(line)
        out.append(("error", v["error"]) if isinstance(v, dict) else v)
    return out


def check(source, requests, bos="", eos="", args=None, tmp_path=None):
    if args is None:
        path = tmp_path / "template.jinja"
        path.write_text(source)
        args = ["--template-file", str(path), "--bos-token", bos, "--eos-token", eos]
    got = ours(args, requests)
    rendered = 0
    for req, g in zip(requests, got):
        want = oracle(source, req, bos, eos)
        if isinstance(want, tuple):
            assert isinstance(g, tuple), f"expected an error for {req}, got {g!r}"
            if want[1] is not None:
                assert g[1] == want[1], req
        else:
            assert g == want, f"request {json.dumps(req)}"
            rendered += 1
    assert rendered > 0, "every request failed in the oracle too: the comparison proves nothing"


# --- conversations ------------------------------------------------------------------------
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather at a place, now. Use \"city, country\" <exact>.",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City and country, e.g. Paris, France"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"]}}}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "description": "Current time, ünïcode ok",
                                             "parameters": {"type": "object", "properties": {}}}}

SYSTEM = {"role": "system", "content": "You are a helpful assistant.\nAnswer briefly."}
U1 = {"role": "user", "content": "Hello! What's 2+2?"}
A1 = {"role": "assistant", "content": "  It is 4.  "}
U2 = {"role": "user", "content": "And in French? Écris «quatre» 🙂"}
A2 = {"role": "assistant", "content": "quatre"}
TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"type": "function", "id": "call_1",
     "function": {"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}}]}
TOOL_CALL_STR = {"role": "assistant", "content": "Let me check.", "tool_calls": [
    {"type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Oslo\"}"}},
    {"type": "function", "function": {"name": "get_time", "arguments": {}}}]}
TOOL_RESULT = {"role": "tool", "content": "{\"temperature\": 21, \"sky\": \"clear\"}"}
TOOL_RESULT2 = {"role": "tool", "content": "12:00"}
THINK = {"role": "assistant", "content": "<think>\nThe user wants 4.\n</think>\n\nIt is 4."}
REASONING = {"role": "assistant", "content": "It is 4.", "reasoning_content": "Simple sum."}

CONVERSATIONS = [
    [U1],
    [SYSTEM, U1],
    [U1, A1, U2],
    [SYSTEM, U1, A1, U2, A2],
    [SYSTEM, U1, A1, U2],
]
TOOL_CONVERSATIONS = [
    [SYSTEM, U1, TOOL_CALL, TOOL_RESULT],
    [U1, TOOL_CALL_STR, TOOL_RESULT, TOOL_RESULT2, A2, U2],
]
THINKING_CONVERSATIONS = [
    [U1, THINK, U2],
    [U1, THINK],
    [SYSTEM, U1, REASONING, U2, REASONING],
]


def requests_for(convs, **extra):
    out = []
    for conv in convs:
        for agp in (False, True):
            out.append(dict(messages=conv, add_generation_prompt=agp, **extra))
    return out


def shipped_templates():
    root = Path(DATA) / "tokenizers"
    if not root.is_dir():
        return []
    found = []
    for cfg in sorted(root.glob("*/tokenizer_config.json")):
        if "chat_template" in json.loads(cfg.read_text()):
            found.append(cfg.parent)
    return found


def token(cfg, key):
    v = cfg.get(key)
    if isinstance(v, dict):
        v = v.get("content")
    return v or ""


def test_shipped_templates_match_transformers():
    dirs = shipped_templates()
    if not dirs:
        pytest.skip(f"no tokenizer_config.json with a chat_template under {DATA}/tokenizers")
    for d in dirs:
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        source = cfg["chat_template"]
        if isinstance(source, list):
            source = next(t["template"] for t in source if t["name"] == "default")
        requests = requests_for(CONVERSATIONS)
        if "tools" in source:
            requests += requests_for(TOOL_CONVERSATIONS, tools=[WEATHER_TOOL, TIME_TOOL])
            requests += requests_for(CONVERSATIONS[:2], tools=[WEATHER_TOOL])
        if "think" in source:
            requests += requests_for(THINKING_CONVERSATIONS)
            requests += requests_for(CONVERSATIONS[:2], enable_thinking=False)
            requests += requests_for(CONVERSATIONS[:2], chat_template_kwargs={"enable_thinking": True})
        # chat_template_kwargs is the CLI's spelling of apply_chat_template's **kwargs.
        for r in requests:
            r.update(r.pop("chat_template_kwargs", {}))
        check(source, requests, token(cfg, "bos_token"), token(cfg, "eos_token"),
              args=["--tokenizer", str(d)])


def test_shipped_template_from_model_dir_and_config_file():
    dirs = shipped_templates()
    if not dirs:
        pytest.skip("no shipped templates in the test data")
    d = dirs[0]
    req = [{"messages": [U1], "add_generation_prompt": True}]
    assert ours(["--tokenizer", str(d)], req) == ours(["--tokenizer", str(d / "tokenizer_config.json")], req)


def gguf_bytes(kv):
    """A minimal GGUF v3 file with metadata only: {key: (type, value)}, types 4 (u32), 8 (string),
    9 (array of strings)."""
    import struct

    def string(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    out = bytearray(b"GGUF") + struct.pack("<IQQ", 3, 0, len(kv))
    for key, (kind, value) in kv.items():
        out += string(key) + struct.pack("<I", kind)
        if kind == 8:
            out += string(value)
        elif kind == 4:
            out += struct.pack("<I", value)
        else:
            out += struct.pack("<IQ", 8, len(value)) + b"".join(string(x) for x in value)
    while len(out) % 32:
        out += b"\0"
    return bytes(out)


def test_template_sources(tmp_path):
    source = "{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{{ eos_token }}"
    req = [{"messages": [U1]}]
    want = "<s>[user]" + U1["content"] + "</s>"
    # GGUF: tokenizer.chat_template, bos/eos through their token ids.
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(gguf_bytes({"general.architecture": (8, "llama"), "tokenizer.chat_template": (8, source),
                                 "tokenizer.ggml.tokens": (9, ["<unk>", "<s>", "</s>"]),
                                 "tokenizer.ggml.bos_token_id": (4, 1), "tokenizer.ggml.eos_token_id": (4, 2)}))
    assert ours(["--tokenizer", str(gguf)], req) == [want]
    # tokenizer_config.json: a list of named templates, tokens as {"content": ...}.
    d = tmp_path / "model"
    d.mkdir()
    (d / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": [{"name": "tool_use", "template": "tools!"}, {"name": "default", "template": source}],
        "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "model_max_length": 10 ** 30}))
    assert ours(["--tokenizer", str(d)], req) == [want]
    # chat_template.jinja beside a config without one; --bos-token overrides.
    d2 = tmp_path / "model2"
    d2.mkdir()
    (d2 / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    (d2 / "chat_template.jinja").write_text(source)
    assert ours(["--tokenizer", str(d2), "--bos-token", "<B>"], req) == ["<B>" + want[3:]]
    # No template anywhere: a clear error, not a fallback.
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text("{}")
    p = subprocess.run([binary("sluice-worker"), "chat-template", "--tokenizer", str(empty)], input=b"",
                       capture_output=True, timeout=10)
    assert p.returncode == 1 and b"has no chat_template" in p.stderr


# --- hand-written templates in the styles models ship ---------------------------------------
CHATML = """{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"""

LLAMA2 = """{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"""

MISTRAL = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

GEMMA = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- set ns = namespace(turns=0, last_role=none) -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- set ns.last_role = role -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
{#- turns: {{ ns.turns }} -#}
"""

LLAMA31_TOOLS = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

DEEPSEEK_R1 = """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' in message %}{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}{%- if not ns.is_first %}{%- if message['content'] is none %}{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- else %}{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns.is_first = true -%}{%- else %}{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}{%- if ns.is_tool %}{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}{%- if ns.is_output_first %}{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"""

# Hermes-style tool use: recursive macros, dict literals spanning lines, loop.previtem/nextitem.
HERMES = """{%- macro json_to_python_type(json_spec) %}
{%- set basic_type_map = {
    "string": "str",
    "number": "float",
    "integer": "int",
    "boolean": "bool"
} %}

{%- if basic_type_map[json_spec.type] is defined %}
    {{- basic_type_map[json_spec.type] }}
{%- elif json_spec.type == "array" %}
    {{- "list[" +  json_to_python_type(json_spec['items']) + "]"}}
{%- elif json_spec.type == "object" %}
    {%- if json_spec.additionalProperties is defined %}
        {{- "dict[str, " + json_to_python_type(json_spec.additionalProperties) + ']'}}
    {%- else %}
        {{- "dict" }}
    {%- endif %}
{%- elif json_spec.type is iterable %}
    {{- "Union[" }}
    {%- for t in json_spec.type %}
      {{- json_to_python_type({"type": t}) }}
      {%- if not loop.last %}
        {{- "," }}
    {%- endif %}
    {%- endfor %}
    {{- "]" }}
{%- else %}
    {{- "Any" }}
{%- endif %}
{%- endmacro %}

{{- bos_token }}
{{- '<|im_start|>system\\n' }}
{{- "You are a function calling AI model. Here are the available tools: <tools> " }}
{%- for tool in tools %}
    {%- if tool.function is defined %}
        {%- set tool = tool.function %}
    {%- endif %}
    {{- '{"type": "function", "function": ' }}
    {{- '{"name": "' + tool.name + '", ' }}
    {{- '"description": "' + tool.name + '(' }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {{- param_name + ": " + json_to_python_type(param_fields) }}
        {%- if not loop.last %}
            {{- ", " }}
        {%- endif %}
    {%- endfor %}
    {{- ")" }}
    {%- if tool.return is defined %}
        {{- " -> " + json_to_python_type(tool.return) }}
    {%- endif %}
    {{- " - " + tool.description + "\\n\\n" }}
    {%- for param_name, param_fields in tool.parameters.properties|items %}
        {%- if loop.first %}
            {{- "    Args:\\n" }}
        {%- endif %}
        {{- "        " + param_name + "(" + json_to_python_type(param_fields) + "): " + param_fields.description|trim }}
    {%- endfor %}
    {{- '"' }}
    {{- ', "parameters": ' }}
    {%- if tool.parameters.properties | length == 0 %}
        {{- "{}" }}
    {%- else %}
        {{- tool.parameters|tojson }}
    {%- endif %}
    {{- "}" }}
    {%- if not loop.last %}
        {{- "\\n" }}
    {%- endif %}
{%- endfor %}
{{- " </tools><|im_end|>\\n" }}
{%- for message in messages %}
    {%- if message.role == "user" or message.role == "system" or (message.role == "assistant" and message.tool_calls is not defined) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
    {%- for tool_call in message.tool_calls %}
       {{- '\\n<tool_call>\\n' }}           {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '{' }}
            {{- '"name": "' }}
            {{- tool_call.name }}
            {{- '", '}}
            {%- if tool_call.arguments is defined %}
                {{- '"arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments|tojson }}
                {%- endif %}
            {%- endif %}
             {{- '}' }}
            {{- '\\n</tool_call>' }}
    {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.previtem and loop.previtem.role != "tool" %}
            {{- '<|im_start|>tool\\n' }}
        {%- endif %}
        {{- '<tool_response>\\n' }}
        {{- message.content }}
        {%- if not loop.last %}
            {{- '\\n</tool_response>\\n' }}
        {%- else %}
            {{- '\\n</tool_response>' }}
        {%- endif %}
        {%- if not loop.last and loop.nextitem.role != "tool" %}
            {{- '<|im_end|>' }}
        {%- elif loop.last %}
            {{- '<|im_end|>' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

RICH_TOOL = {"type": "function", "function": {
    "name": "search", "description": "Search documents. ",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": " words "},
        "tags": {"type": "array", "items": {"type": "string"}, "description": "filters"},
        "limit": {"type": ["integer", "number"], "description": "max hits"},
        "extra": {"type": "object", "additionalProperties": {"type": "number"}, "description": "weights"},
        "blob": {"description": "anything"}}},
    "return": {"type": "array", "items": {"type": "object"}}}}

# Indented, un-dashed tags: trim_blocks and lstrip_blocks decide the output here.
WHITESPACE = """<conversation>
  {% for m in messages %}
    {% if m.role == 'system' %}
    [system] {{ m.content }}
    {% else %}
    [{{ m.role | upper }}] {{ m.content }}  {# a comment #}
    {% endif %}
  {% endfor %}
  {%+ if add_generation_prompt %}  [ASSISTANT]{% endif +%}
</conversation>
"""

PARTS = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": " Describe it. "}]}]


@pytest.mark.parametrize("name,source", [
    ("chatml", CHATML), ("llama2", LLAMA2), ("mistral", MISTRAL), ("gemma", GEMMA),
    ("llama31_tools", LLAMA31_TOOLS), ("qwen25", QWEN25), ("deepseek_r1", DEEPSEEK_R1), ("hermes", HERMES),
    ("whitespace", WHITESPACE)])
def test_hand_written_templates_match_jinja2(name, source, tmp_path):
    requests = requests_for(CONVERSATIONS + THINKING_CONVERSATIONS + [[U1, U2], [A1], PARTS, [SYSTEM, TOOL_RESULT]])
    requests += requests_for(TOOL_CONVERSATIONS, tools=[WEATHER_TOOL, TIME_TOOL])
    requests += requests_for(TOOL_CONVERSATIONS[1:], tools=[RICH_TOOL, TIME_TOOL])
    requests += requests_for(CONVERSATIONS[1:2], tools=[WEATHER_TOOL], tools_in_user_message=False,
                             date_string="01 Jan 2025")
    requests += requests_for(CONVERSATIONS[1:2], builtin_tools=["brave_search", "code_interpreter"], tools=[])
    check(source, requests, "<s>", "</s>", tmp_path=tmp_path)


# --- single constructs ----------------------------------------------------------------------
SNIPPETS = [
    ("{{ 'a' ~ 1 ~ none ~ true ~ 1.5 ~ undefined_name }}", {}),
    ("{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 2 ** 10 }} {{ 7 / 2 }} {{ 6 / 3 }} {{ 1e3 }} {{ 0.1 + 0.2 }}", {}),
    ("{{ [1, 'a', none, true, 1.0, {'k': [2]}, (1, 2), (3,)] }}", {}),
    ("{{ 'it\\'s' }} {{ \"say \\\"hi\\\"\" }} {{ 'tab\\there' }} {{ '\\u00e9\\x41' }} {{ 'a' 'b' }}", {}),
    ("{{ x[1:] }}|{{ x[::-1] }}|{{ x[:-1] }}|{{ x[-2:] }}|{{ x[1:4:2] }}|{{ s[::-1] }}|{{ s[1:3] }}|{{ s[-1] }}",
     {"x": [1, 2, 3, 4, 5], "s": "héllo"}),
    ("{{ s|length }} {{ x|length }} {{ d|length }} {{ x|count }} {{ nope|length }}",
     {"s": "héllo🙂", "x": [1, 2], "d": {"a": 1}}),
    ("{{ '  a b  '|trim }}|{{ 'xxaxx'|trim('x') }}|{{ 'ab'|upper }}|{{ 'AB'|lower }}|{{ 'hello world'|capitalize }}|"
     "{{ 'hello wORLD-foo (bar'|title }}|{{ 'aaa'|replace('a', 'b', 2) }}", {}),
    ("{{ x|join(', ') }}|{{ x|first }}|{{ x|last }}|{{ x|reverse|list }}|{{ x|sort }}|{{ x|sort(reverse=true) }}|"
     "{{ x|unique|list }}|{{ x|sum }}|{{ x|min }}|{{ x|max }}", {"x": [3, 1, 2, 3]}),
    ("{{ u|sort(attribute='age')|map(attribute='name')|join(',') }}|{{ u|selectattr('admin')|map(attribute='name')|list }}|"
     "{{ u|rejectattr('admin')|map(attribute='name')|list }}|{{ u|selectattr('name', 'equalto', 'bo')|list|length }}|"
     "{{ u|map(attribute='missing', default='?')|join }}|{{ u|sum(attribute='age') }}",
     {"u": [{"name": "al", "age": 30, "admin": True}, {"name": "bo", "age": 20, "admin": False},
            {"name": "cy", "age": 25}]}),
    ("{{ ['a', 'B', 'c']|map('upper')|join }}|{{ [1, 2, 3, 4]|select('even')|list }}|{{ [1, 2, 3]|reject('odd')|list }}|"
     "{{ ['b', 'A', 'c']|sort|join }}|{{ ['b', 'A', 'c']|sort(case_sensitive=true)|join }}|{{ [1, none, 2]|select|list }}", {}),
    ("{{ d|items|list }}|{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}|{{ d.keys()|list }}|{{ d.values()|list }}|"
     "{{ d.get('a') }}|{{ d.get('z', 'dflt') }}|{{ d.get('z') }}|{{ d['a'] }}|{{ d.a }}", {"d": {"a": 1, "b": [2]}}),
    ("{{ x|tojson }}|{{ x|tojson(indent=2) }}|{{ s|tojson }}|{{ x|tojson(sort_keys=true) }}|{{ [1.5, none, true]|tojson }}",
     {"x": {"z": 1, "a": ["é", "<&>'", {"q": "\"\\\n"}], "e": {}, "l": []}, "s": "ü🙂\u0001"}),
    ("{{ x|tojson(separators=(',', ':')) }}|{{ x|tojson(ensure_ascii=true) }}", {"x": {"a": [1, "é🙂"]}}),
    ("{{ undefined_var }}|{{ undefined_var is defined }}|{{ undefined_var is undefined }}|{{ undefined_var|default('d') }}|"
     "{{ none|default('d') }}|{{ ''|default('d', true) }}|{{ ''|d('d') }}|{{ m.nope is defined }}|{{ m.a.b is defined }}",
     {"m": {"a": 1}}),
    ("{% for x in xs %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.length }}/"
     "{{ loop.first }}/{{ loop.last }}/{{ loop.previtem }}/{{ loop.nextitem }}/{{ loop.cycle('a', 'b') }};{% endfor %}",
     {"xs": ["p", "q", "r"]}),
    ("{% for x in xs if x != 2 %}{{ x }}@{{ loop.index }}of{{ loop.length }} {% else %}empty{% endfor %}|"
     "{% for x in [] %}no{% else %}empty{% endfor %}|"
     "{% for x in xs %}{% if x == 2 %}{% continue %}{% endif %}{% if x == 4 %}{% break %}{% endif %}{{ x }}{% endfor %}",
     {"xs": [1, 2, 3, 4, 5]}),
    ("{% set ns = namespace(n=0, items=[]) %}{% for x in range(5) %}{% set ns.n = ns.n + x %}{% set y = x %}{% endfor %}"
     "{{ ns.n }}|{{ y is defined }}|{% set a, b = 1, 2 %}{{ a }}{{ b }}|{% set t %}block {{ a }}{% endset %}{{ t }}|"
     "{{ range(3)|list }}{{ range(1, 10, 3)|list }}{{ range(5, 0, -2)|list }}", {}),
    ("{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('al') }} {{ greet('bo', '?') }} "
     "{{ greet(name='cy', punct='.') }}|{% macro wrap() %}[{{ caller() }}]{% endmacro %}{% call wrap() %}inside{% endcall %}"
     "|{% filter upper %}shout {{ 'this' }}{% endfilter %}|{% raw %}{{ not parsed }}{% endraw %}", {}),
    ("{{ 'abc'.startswith('a') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} "
     "{{ 'a,b,c'.split(',', 1) }} {{ 'a,b,c'.rsplit(',', 1) }} {{ '--x--'.strip('-') }} {{ '\\n x'.lstrip() }} "
     "{{ 'x \\n'.rstrip() }} {{ 'hello'.find('l') }} {{ 'hello'.count('l') }} {{ '-'.join(['a', 'b']) }} "
     "{{ 'they are'.title() }} {{ 'aXb'.upper() }}{{ 'aXb'.lower() }} {{ 'a\\nb\\r\\nc'.splitlines() }}", {}),
    ("{{ 1 if true else 2 }} {{ 1 if false }} {{ 'yes' if x else 'no' }} {{ not x }} {{ x and 'a' }} {{ x or 'b' }} "
     "{{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 'b' in 'abc' }} {{ 2 not in [1, 3] }} {{ 'k' in {'k': 1} }} {{ 1 == 1.0 }} "
     "{{ [1, 2] == [1, 2] }} {{ 'a' != 'b' }} {{ -x }} {{ +1 }}", {"x": 0}),
    ("{{ 3 is odd }} {{ 4 is even }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(4) }} {{ 'x' is string }} "
     "{{ 1 is number }} {{ 1.0 is float }} {{ 1 is integer }} {{ true is boolean }} {{ none is none }} {{ {} is mapping }} "
     "{{ [] is iterable }} {{ 'x' is sequence }} {{ x is true }} {{ x is false }} {{ 1 is eq 1 }} {{ 1 is ne 2 }} "
     "{{ 1 is lt 2 }} {{ 2 is gt 1 }} {{ 2 is ge 2 }} {{ 2 is le 1 }} {{ 2 is in [1, 2] }} {{ 'AB' is upper }} "
     "{{ 'ab' is lower }} {{ x is sameas true }} {{ 1 is not string }}", {"x": True}),
    ("{{ '3'|int + 1 }} {{ '3.7'|int }} {{ 'x'|int }} {{ 'x'|int(7) }} {{ 3.9|int }} {{ '2.5'|float }} {{ 2|float }} "
     "{{ -3|abs }} {{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 2.1|round(0, 'ceil') }} {{ 5|string ~ 'x' }}", {}),
    ("{{ text|indent }}|{{ text|indent(2, true) }}|{{ text|indent(2, blank=true) }}|{{ [1, 2, 3, 4, 5]|batch(2)|list }}|"
     "{{ '<a href=\"x\">'|escape }}|{{ 'x'|safe }}|{{ 'one two  three'|wordcount }}",
     {"text": "a\n\nb\nc"}),
    ("{% set d = dict(a=1, b='x') %}{{ d }}|{{ namespace(a=1).a }}|{{ (1, 2)[0] }}|{{ [[1, 2], [3]][0][1] }}|"
     "{{ x.0 }}|{{ {'a': {'b': 'deep'}}.a.b }}|{{ 'abc'[1] }}|{{ xs[10] is defined }}", {"x": ["zero"], "xs": [1]}),
    ("{%- if true -%}\n  a  \n{%- endif -%}\n  b  {{- ' c ' -}}  d\n{# comment -#}\n  e{{ '' }}\n", {}),
    ("{{ 'x' * 3 }} {{ [1] * 2 }} {{ [1] + [2] }} {{ 'a' + 'b' }} {{ 10 - 2.5 }} {{ 1e20 * 10 }} {{ 1/3 }} {{ 2**0.5 }}", {}),
    ("{{ '%s has %d items (%.2f%%) %r'|format('list', 3, 12.345, 'x') }}|{{ 'n=%05d' % 42 }}|{{ '%s-%s' % (1, 'b') }}", {}),
    ("{% for k, v in d|dictsort %}{{ k }}{{ v }}{% endfor %}|{{ d|dictsort(by='value', reverse=true) }}",
     {"d": {"b": 1, "a": 3, "C": 2}}),
    ("{{ -2 ** 2 }} {{ 2 ** 3 ** 2 }} {{ not true == false }} {{ (1 + 2) * 3 }} {{ 10 // 3 * 3 }} {{ [1, 2] < [1, 3] }} "
     "{{ 1 in [1.0] }} {{ true + 1 }} {{ 'ab' * 0 }} {{ (1, 2) + (3,) }} {{ 1e-4 }} {{ 1e-5 }} {{ 2.5e-3 }} "
     "{{ 12345678901234567890.0 }} {{ 1/7 }} {{ 0.1 * 3 }} {{ 3.0|int }} {{ 1.0 ~ '' }}", {}),
    ("{{ 'abc'|first }} {{ 'x'.join('abc') }} {{ range(3)|map('string')|join('-') }} {{ 'Hello'|replace('l', '') }} "
     "{{ 'a b c'.split(' ', 1) }} {{ 'abc'[::2] }}[{{ 'abc'[5:] }}] {{ [1, 2, 3][-5:] }} {{ [1, 2, 3][::-2] }} "
     "{{ 'h\u00e9llo'.find('l') }}[{{ loop }}] {{ {'a': 1}.items()|list }} {{ ('a', 'b')|join }} "
     "{% for a, b in [[1, 2], [3, 4]] %}{{ a + b }}{% endfor %} {% for x in {'b': 1, 'a': 2} %}{{ x }}{% endfor %}", {}),
    ("{% if x == 1 %}one{% elif x == 2 %}two{% elif x == 3 %}three{% else %}many{% endif %}"
     "{{ x|string|length }}{{ m|selectattr('role', 'eq', 'user')|list|count }}{{ m[0].nope|default('d') }}",
     {"x": 3, "m": [{"role": "user"}, {"role": "assistant"}, {"role": "user"}]}),
    ("{{ '{} and {}'.format(1, 'b') }}|{{ '{1}{0}{{x}}'.format('a', 'b') }}|{{ '{n!r}:{v:>6.2f}|{s:_<5}|{s:^7}|{i:4d}|{p:.1%}'.format("
     "n='k', v=3.14159, s='ab', i=42, p=0.256) }}|{{ '{:.3}'.format('abcdef') }}", {}),
    ("{{ 2.5 is odd }} {{ 3.0 is odd }} {{ 4.0 is even }} {{ -3 is odd }} {{ 7.5 is divisibleby 2.5 }} {{ (1, 'a')[1:] }}"
     "[{{ 1[0] }}]", {}),
    ("{% set a = 1 %}{% with a = 2, b = a %}{{ a }}{{ b }}{% set c = 3 %}{% endwith %}{{ a }}{{ c is defined }}|"
     "{{ {'k': [1]}|tojson(indent='  ') }}", {}),
    ("{{ ' '.join(['a', 1]) }}", {}),
    ("{{ 5 % 0 }}", {}),
    ("{{ x['a'] }}", {"x": None}),
    ("{% for m in messages %}{{ m }}{% endfor %}", {}),
    ("{{ raise_exception('custom failure: ' ~ x) }}", {"x": 42}),
    ("{{ strftime_now('%Y') }}", {}),
    ("{% generation %}generated {{ 1 }}{% endgeneration %}", {}),
]


def test_snippets_match_jinja2(tmp_path):
    failures = []
    for i, (source, variables) in enumerate(SNIPPETS):
        path = tmp_path / f"s{i}.jinja"
        path.write_text(source)
        req = dict(messages=[], **variables)
        got = ours(["--template-file", str(path)], [req])[0]
        want = oracle(source, req)
        if isinstance(want, tuple):
            ok = isinstance(got, tuple) and (want[1] is None or got[1] == want[1])
        else:
            ok = got == want
        if not ok:
            failures.append(f"{source!r}\n  want {want!r}\n  got  {got!r}")
    assert not failures, "\n".join(failures)


def test_random_whitespace_control_matches_jinja2(tmp_path):
    """Seeded random mixes of tags with -, + and neither, comments, raw blocks and blank text:
    trim_blocks and lstrip_blocks edge cases, each compared with jinja2."""
    import random
    pieces = ["{% if x %}", "{%- if x %}", "{% if x -%}", "{%+ if x %}", "{% if x +%}", "{{ x }}", "{{- x }}",
              "{{ x -}}", "{# c #}", "{#- c -#}", "{# c -#}", "\n", "\n\n", "  ", "\t", " a ", "b", "\r\n",
              "{% raw %} {{x}} {% endraw %}", "{%- raw -%} r {%- endraw %}", "{% for i in [1] %}", "{% set y = 1 %}"]
    rng = random.Random(2024)
    failures = []
    for i in range(80):
        parts, stack = [], []
        for _ in range(rng.randint(1, 12)):
            if stack and rng.random() < 0.25:
                tag = stack.pop()
                parts.append(rng.choice(["{% end" + tag + " %}", "{%- end" + tag + " -%}", "  {% end" + tag + " +%}"]))
                continue
            p = rng.choice(pieces)
            if p.startswith("{%") and " if " in p:
                stack.append("if")
            elif p.startswith("{% for"):
                stack.append("for")
            parts.append(p)
        parts += ["{% end" + t + " %}" for t in reversed(stack)]
        source = "".join(parts) + rng.choice(["", "\n", "  \n"])
        path = tmp_path / f"w{i}.jinja"
        path.write_bytes(source.encode())
        req = {"messages": [], "x": rng.choice([True, False, "v"])}
        got = ours(["--template-file", str(path)], [req])[0]
        want = oracle(source, req)
        if got != want:
            failures.append(f"{source!r} x={req['x']!r}: want {want!r}, got {got!r}")
    assert not failures, "\n".join(failures[:10])


# --- errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source,message", [
    ("{{ x|frobnicate }}", "line 1: unknown filter 'frobnicate'"),
    ("a\n{% if x is frobbed %}{% endif %}", "line 2: unknown test 'frobbed'"),
    ("a\nb\n{% include 'x.html' %}", "line 3: unsupported tag 'include'"),
    ("{% import 'm.j' as m %}", "line 1: unsupported tag 'import'"),
    ("{% for x in y %}\n{{ x }}", "line 1: missing {% endfor %} for {% for %}"),
    ("{% if x %}{% endfor %}", "line 1: unexpected 'endfor'"),
    ("{{ 'abc' }", "line 1: unexpected"),
    ("{% break %}", "line 1: 'break' outside of a loop"),
])
def test_compile_errors_name_construct_and_line(source, message, tmp_path):
    path = tmp_path / "bad.jinja"
    path.write_text(source)
    p = subprocess.run([binary("sluice-worker"), "chat-template", "--template-file", str(path)], input=b"",
                       capture_output=True, timeout=10)
    assert p.returncode == 1
    assert message in p.stderr.decode()


def test_bad_request_lines_answer_an_error_and_continue(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text(CHATML)
    stdin = 'not json\n{"messages": 5}\n{"messages": [], "add_generation_prompt": "yes"}\n' \
            '{"messages": [{"role": "user", "content": "ok"}]}\n'
    p = subprocess.run([binary("sluice-worker"), "chat-template", "--template-file", str(path)],
                       input=stdin.encode(), capture_output=True, timeout=10)
    lines = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert len(lines) == 4
    assert all("error" in x for x in lines[:3])
    assert lines[3] == "<|im_start|>user\nok<|im_end|>\n"


def test_runtime_errors_name_line(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("ok\n{{ 1 + 'a' }}")
    got = ours(["--template-file", str(path)], [{"messages": []}])[0]
    assert got == ("error", "line 2: unsupported operand type(s) for +: 'int' and 'str'")
