"""The official `openai` SDK works against a Ziggurat server unchanged.

Start a server first (`make serve`), then: python examples/openai_sdk.py
(`pip install openai`; any API key string works unless the server was started with --api-key.)
"""

from __future__ import annotations

import os

from openai import OpenAI


def main() -> None:
    base_url = os.environ.get("ZIGGURAT_BASE_URL", "http://localhost:8000").rstrip("/")
    if not base_url.endswith("/v1"):
        base_url += "/v1"  # the openai SDK expects the /v1 prefix in base_url
    client = OpenAI(base_url=base_url, api_key=os.environ.get("ZIGGURAT_API_KEY", "unused"))
    model = client.models.list().data[0].id

    reply = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give me one fun fact about octopuses."}],
        max_tokens=48,
    )
    print(reply.choices[0].message.content)

    stream = client.completions.create(
        model=model, prompt="The quick brown fox", max_tokens=16, stream=True
    )
    for chunk in stream:
        print(chunk.choices[0].text, end="", flush=True)
    print()
    client.close()


if __name__ == "__main__":
    main()
