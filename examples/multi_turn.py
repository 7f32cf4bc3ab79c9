"""Multi-turn conversation: the client is stateless, so the history is resent every turn.

Start a server first (`make serve`), then: python examples/multi_turn.py
Pass --interactive to type your own turns (an empty line ends the chat).
"""

from __future__ import annotations

import argparse
from typing import Any

from ziggurat import Client

SCRIPTED_TURNS = [
    "Hi! My name is Ada. Can you suggest a name for a pet robot?",
    "I like that. What was my name again?",
    "Thanks! Say goodbye to me by name.",
]


def chat(interactive: bool) -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a friendly assistant. Keep replies short."}
    ]
    with Client() as client:
        model = client.models.list().data[0].id
        turns = iter(lambda: input("you> ").strip(), "") if interactive else iter(SCRIPTED_TURNS)
        for user_text in turns:
            if not interactive:
                print(f"you> {user_text}")
            history.append({"role": "user", "content": user_text})
            reply = client.chat.completions.create(model, history, max_tokens=96)
            answer = reply.choices[0].message.content or ""
            print(f"bot> {answer}\n")
            history.append({"role": "assistant", "content": answer})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactive", action="store_true", help="type your own turns")
    chat(parser.parse_args().interactive)
