"""Quickstart: one chat completion with the synchronous client.

Start a server first (`make serve`), then: python examples/quickstart.py
The server address comes from $ZIGGURAT_BASE_URL (default http://localhost:8000).
"""

from __future__ import annotations

from ziggurat import Client


def main() -> None:
    with Client() as client:
        model = client.models.list().data[0].id
        reply = client.chat.completions.create(
            model,
            [
                {"role": "system", "content": "You are a concise assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            max_tokens=48,
            temperature=0.2,
        )
    print(f"[{model}] {reply.choices[0].message.content}")
    if reply.usage is not None:
        print(
            f"tokens: {reply.usage.prompt_tokens} prompt + "
            f"{reply.usage.completion_tokens} completion"
        )


if __name__ == "__main__":
    main()
