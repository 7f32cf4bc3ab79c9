"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response

from . import __version__
from .body_limit import BodySizeLimitMiddleware
from .disconnect import ClientDisconnected
from .errors import install_error_handlers
from .heap_trim import start_heap_trim
from .middleware import RequestContextMiddleware
from .openapi import ModelBounds, common_errors, install_openapi
from .routes import chat, completions, health, info, metrics, models, tokenize
from .serving_engine import ServingEngine, load_async_engine
from .settings import ServerSettings
from .state import EngineFactory, ServerState

# nginx's code for "client closed the request": only ever seen in logs and metrics.
CLIENT_CLOSED_REQUEST = 499


def create_app(
    settings: ServerSettings,
    engine: ServingEngine | None = None,
    *,
    engine_factory: EngineFactory | None = None,
    on_ready: Callable[[ServingEngine], None] | None = None,
    on_load_error: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. With no `engine`, `engine_factory` (default: load `settings.model`) runs in
    a background thread at start-up; /health answers 503 "loading" until it returns."""
    state = ServerState(settings)
    if engine is not None:
        state.engine = engine

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.drain.attach()
        if state.engine is None:
            factory = engine_factory or (lambda: load_async_engine(settings.engine_config()))
            state.start_loading(factory, on_ready, on_load_error)
        elif on_ready is not None:
            on_ready(state.engine)
        heap_trim = start_heap_trim()
        try:
            yield
        finally:
            # Joining threads blocks: do it off the event loop.
            await anyio.to_thread.run_sync(state.shutdown)
            if heap_trim is not None:
                await anyio.to_thread.run_sync(heap_trim.stop)

    app = FastAPI(title="Ziggurat", version=__version__, lifespan=lifespan)
    app.state.server = state
    install_error_handlers(app)

    async def client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    app.add_exception_handler(ClientDisconnected, client_gone)
    # The last added runs first: ids, auth and metrics wrap the body limit.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics, api_key=settings.api_key)
    for module in (health, models, completions, chat, info, tokenize, metrics):
        needs_key = settings.api_key is not None and module is not health
        app.include_router(module.router, responses=common_errors(needs_key=needs_key))

    def model_bounds() -> ModelBounds | None:
        engine = state.engine
        if state.status != "ok" or engine is None:
            return None
        return engine.model_config.vocab_size, engine.max_model_len

    install_openapi(app, model_bounds)
    return app
