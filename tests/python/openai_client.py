"""The official `openai` package against LOTUS's OpenAI-compatible endpoint.

Run by the CLI tests (crates/lotus/tests/cli/api.rs) with LOTUS_URL and LOTUS_TOKEN set, against a
`lotus up` whose provider is a scripted stand-in that answers "The capital of France is Paris.".
"""

import os
import sys

import openai
from openai import OpenAI

base = os.environ["LOTUS_URL"] + "/v1"
client = OpenAI(base_url=base, api_key=os.environ["LOTUS_TOKEN"], max_retries=0)

models = [m.id for m in client.models.list()]
assert "ash" in models, models

messages = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is the capital of France?"},
]
r = client.chat.completions.create(model="ash", messages=messages)
answer = r.choices[0].message.content
assert "Paris" in answer, answer
assert r.choices[0].finish_reason == "stop", r.choices[0].finish_reason
assert r.usage is not None and r.usage.total_tokens > 0, r.usage

text = ""
usage = None
chunks = 0
for chunk in client.chat.completions.create(
    model="ash", messages=messages, stream=True, stream_options={"include_usage": True}
):
    chunks += 1
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage is not None:
        usage = chunk.usage
assert "Paris" in text, text
assert chunks >= 3, chunks
assert usage is not None and usage.total_tokens > 0, usage

try:
    OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    sys.exit("a wrong token was accepted")
except openai.AuthenticationError:
    pass

try:
    client.chat.completions.create(model="ash", messages=[])
    sys.exit("an empty conversation was accepted")
except openai.BadRequestError as e:
    assert "empty" in str(e), e

print(f"ok: {answer!r}; streamed {chunks} chunks, {usage.total_tokens} tokens")
