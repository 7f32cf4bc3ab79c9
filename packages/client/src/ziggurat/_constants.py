"""Defaults shared by the sync and async clients."""

from __future__ import annotations

import httpx

BASE_URL_ENV = "ZIGGURAT_BASE_URL"
API_KEY_ENV = "ZIGGURAT_API_KEY"
DEFAULT_BASE_URL = "http://localhost:8000"
API_PREFIX = "/v1"

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MAX_RETRIES = 3
# Many concurrent requests (asyncio.gather over hundreds of prompts) share one pool.
DEFAULT_CONNECTION_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=128)

REQUEST_ID_HEADER = "X-Request-Id"
ATTEMPT_HEADER = "X-Ziggurat-Attempt"
