"""The gateway from the official OpenAI Python client (pip install openai)."""
import os

from openai import OpenAI

client = OpenAI(base_url=os.environ.get("BASE_URL", "http://127.0.0.1:8000/v1"),
                api_key=os.environ.get("OPENAI_API_KEY", "unused"))
model = os.environ.get("MODEL_NAME") or client.models.list().data[0].id

reply = client.chat.completions.create(model=model, max_tokens=32,
                                       messages=[{"role": "user", "content": "Tell me a story"}])
print(reply.choices[0].message.content)
print(reply.usage)

stream = client.chat.completions.create(model=model, max_tokens=32, stream=True,
                                        stream_options={"include_usage": True},
                                        messages=[{"role": "user", "content": "Tell me a story"}])
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print("\n", chunk.usage)
