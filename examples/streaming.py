"""Streaming: print a chat reply token by token as the server generates it.

Start a server first (`make serve`), then: python examples/streaming.py
"""

from __future__ import annotations

import sys

from ziggurat import Client


def main() -> None:
    with Client() as client:
        model = client.models.list().data[0].id
        stream = client.chat.completions.create(
            model,
            [{"role": "user", "content": "Write a haiku about the sea."}],
            max_tokens=64,
            stream=True,
            stream_options={"include_usage": True},
        )
        # The loop closes the HTTP response when it ends, breaks or raises.
        for chunk in stream:
            for choice in chunk.choices:
                sys.stdout.write(choice.delta.content or "")
                sys.stdout.flush()
            if chunk.usage is not None:  # the last chunk when include_usage is set
                print(f"\n\n({chunk.usage.completion_tokens} tokens)")


if __name__ == "__main__":
    main()
