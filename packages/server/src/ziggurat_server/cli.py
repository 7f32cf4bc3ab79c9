"""`ziggurat-server serve`: check the options, bind the port, load the model, serve."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvicorn
from ziggurat_core.engine.default_model import resolve_model_path
from ziggurat_core.engine.errors import ModelNotFoundError

from . import __version__
from .serving_engine import ServingEngine
from .settings import (
    ServerSettings,
    SettingsError,
    build_serve_parser,
    new_parser,
    resolve_settings,
)

PROG = "ziggurat-server"
EXIT_USAGE = 2  # bad options or a missing model, like argparse
EXIT_FAILURE = 1
# Seconds uvicorn waits past --shutdown-timeout, for the answers the app sends then.
SHUTDOWN_GRACE_S = 2


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the app when a shutdown signal starts the drain."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self.on_exit()  # the first call starts the countdown; later ones change nothing


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser(PROG, "Ziggurat: an OpenAI-compatible LLM inference server.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve a model over HTTP (OpenAI API)",
        description="Serve a model over an OpenAI-compatible HTTP API. Every option can also be "
                    "set in a YAML file (--config) or a ZIGGURAT_<OPTION> environment variable; "
                    "flags win over the environment, which wins over the file.")
    build_serve_parser(serve)
    return parser


def _fail(message: str, code: int) -> int:
    # One line, no traceback: the message already says what to fix.
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _bound_openmp_spinning() -> None:
    """The model loads in a worker thread while the event loop runs, and steps in a third
    thread; OpenMP workers that spin long between ops steal the cores these threads need (with
    libgomp's default spin, CPU decode steps slowed down many times over on a busy host).
    Sleeping at once (OMP_WAIT_POLICY=PASSIVE) costs a futex wake-up per parallel region
    instead, and a step runs hundreds of them, so a short spin (GOMP_SPINCOUNT=20000, a few tens
    of microseconds) serves faster than either and still leaves idle workers asleep (figures in
    docs/benchmarks.md). Set before torch loads libgomp; an
    explicit user setting of either variable wins."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = "20000"


def main(argv: Sequence[str] | None = None) -> int:
    _bound_openmp_spinning()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        settings = resolve_settings(args)
        resolve_model_path(settings.model)  # before binding a port: a typo fails in a second
    except (SettingsError, ModelNotFoundError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    return serve(settings)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _url(host: str, port: int) -> str:
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def _configure_logging(level: str) -> None:
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(level=numeric, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(settings: ServerSettings) -> int:
    from .app import create_app

    _configure_logging(settings.log_level)
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}",
                     EXIT_FAILURE)
    url = _url(settings.host, sock.getsockname()[1])

    def announce(engine: ServingEngine) -> None:
        print(f"Serving {engine.model_name} at {url}/v1", flush=True)

    load_failed = False

    def give_up(message: str) -> None:
        nonlocal load_failed
        load_failed = True
        _fail(f"the model failed to load: {message}", EXIT_FAILURE)
        server.should_exit = True  # uvicorn polls this flag; no point serving 503s forever

    app = create_app(settings, on_ready=announce, on_load_error=give_up)
    verbose = settings.log_level in ("debug", "trace")
    config = uvicorn.Config(
        app,
        # uvicorn's own start-up chatter is noise next to the progress bar and the URL line.
        log_level=settings.log_level if verbose else "warning",
        access_log=verbose,
        # The app ends what is still running at --shutdown-timeout (shutdown.py); uvicorn only
        # cancels what is left after the grace that lets those answers go out.
        timeout_graceful_shutdown=settings.shutdown_timeout + SHUTDOWN_GRACE_S,
        lifespan="on",
    )
    server = DrainingServer(config, on_exit=app.state.server.drain.begin)
    # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to its previous handler;
    # a no-op handler there turns a clean drain into exit code 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
    return EXIT_FAILURE if load_failed or not server.started else 0


if __name__ == "__main__":
    sys.exit(main())
