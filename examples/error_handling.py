"""Error handling and retries: typed exceptions, the server's messages, retry settings, logs.

Start a server first (`make serve`), then: python examples/error_handling.py
"""

from __future__ import annotations

import logging

from ziggurat import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    BadRequestError,
    Client,
    NotFoundError,
    RateLimitError,
)

MESSAGES = [{"role": "user", "content": "Hello!"}]


def main() -> None:
    # Debug logs show every attempt and every retry (never the API key).
    logging.basicConfig(format="%(name)s %(levelname)s %(message)s")
    logging.getLogger("ziggurat").setLevel(logging.DEBUG)

    with Client(max_retries=3, timeout=60.0) as client:
        model = client.models.list().data[0].id

        try:
            client.chat.completions.create("no-such-model", MESSAGES)
        except NotFoundError as error:
            print(f"404 as expected: {error.message} (request id {error.request_id})")

        try:
            client.chat.completions.create(model, MESSAGES, temperature=9.0)
        except BadRequestError as error:
            print(f"400 as expected: {error.message} (param={error.param})")

        try:
            reply = client.with_options(max_retries=5).chat.completions.create(
                model, MESSAGES, max_tokens=16
            )
            print(f"ok: {reply.choices[0].message.content!r}")
        except RateLimitError as error:
            # Raised only once the retries are spent; the client already honoured Retry-After.
            print(f"still overloaded, retry after {error.retry_after}s")
        except APIError as error:
            print(f"failed with HTTP {error.status_code}: {error.message}")

    # Nothing listens on port 9: connection errors are retried, then raised as one exception.
    with Client(base_url="http://127.0.0.1:9", max_retries=1, timeout=2.0) as offline:
        try:
            offline.models.list()
        except APITimeoutError:
            print("timed out")
        except APIConnectionError as error:
            print(f"connection error as expected: {error.message}")


if __name__ == "__main__":
    main()
