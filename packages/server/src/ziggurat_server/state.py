"""Server-wide state: the engine (once loaded), the loading status, metrics, admission control,
the response cache and the frontend's worker pool."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ziggurat_core.engine.errors import EngineError
from ziggurat_core.engine.reports import DeviceInfo
from ziggurat_core.engine.startup_heap import freeze_startup_heap

from .admission import AdmissionControl
from .errors import engine_unavailable
from .frontend_pool import FrontendPool, default_frontend_threads
from .metrics import ServerMetrics
from .response_cache import ResponseCache
from .serving_engine import ServingEngine
from .settings import ServerSettings
from .shutdown import ServerShuttingDown, ShutdownDrain

logger = logging.getLogger("ziggurat_server")

EngineFactory = Callable[[], ServingEngine]


@dataclass
class ServerState:
    settings: ServerSettings
    metrics: ServerMetrics = field(default_factory=ServerMetrics)
    started_at: float = field(default_factory=time.time)
    engine: ServingEngine | None = None
    load_error: str | None = None
    admission: AdmissionControl = field(init=False)
    response_cache: ResponseCache = field(init=False)
    drain: ShutdownDrain = field(init=False)
    frontend: FrontendPool = field(init=False)
    _loader: threading.Thread | None = field(default=None, init=False, repr=False)
    _device_info: DeviceInfo | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.admission = AdmissionControl(
            max_running=self.settings.max_num_seqs, max_waiting=self.settings.max_queue)
        self.response_cache = ResponseCache(
            max_entries=self.settings.response_cache_max_entries,
            max_bytes=int(self.settings.response_cache_max_bytes),
            ttl_s=self.settings.response_cache_ttl, metrics=self.metrics.response_cache)
        self.drain = ShutdownDrain(self.settings.shutdown_timeout)
        self.frontend = FrontendPool(
            self.settings.frontend_threads or default_frontend_threads(),
            nice=self.settings.resolved_frontend_nice)

    # ------------------------------------------------------------------ status
    @property
    def status(self) -> str:
        """'ok', 'loading', 'error' (load failed, or the engine loop died) or 'degraded' (some
        replicas of a replica set are down; the others serve)."""
        if self.load_error is not None:
            return "error"
        if self.engine is None:
            return "loading"
        if self.engine.errored:
            return "error"
        replicas = self.engine.replicas()
        return "degraded" if any(r.state != "up" for r in replicas) else "ok"

    def require_engine(self) -> ServingEngine:
        """The engine, or a 503 that says why there is none."""
        if self.drain.expired:
            raise ServerShuttingDown()
        if self.load_error is not None:
            raise engine_unavailable(f"The model failed to load: {self.load_error}",
                                     code="model_load_failed")
        if self.engine is None:
            raise engine_unavailable("The model is still loading; retry shortly.",
                                     code="model_loading")
        if self.engine.errored:
            raise engine_unavailable("The engine stopped after an internal error; the server "
                                     "must be restarted.", code="engine_dead")
        return self.engine

    # ------------------------------------------------------------------ loading
    def start_loading(self, factory: EngineFactory,
                      on_ready: Callable[[ServingEngine], None] | None = None,
                      on_error: Callable[[str], None] | None = None) -> None:
        """Load the engine in a worker thread so the server answers /health meanwhile."""
        self._loader = threading.Thread(target=self._load, args=(factory, on_ready, on_error),
                                        name="ziggurat-model-loader", daemon=True)
        self._loader.start()

    def _load(self, factory: EngineFactory, on_ready: Callable[[ServingEngine], None] | None,
              on_error: Callable[[str], None] | None) -> None:
        progress = LoadingProgress(self.settings.model)
        try:
            engine = factory()
        except Exception as exc:  # reported by /health (and on_error); never crashes the server
            progress.close()
            self.load_error = f"{type(exc).__name__}: {exc}"
            # The engine's typed errors say what to fix; a traceback only buries the message.
            logger.error("model load failed: %s", self.load_error,
                         exc_info=None if isinstance(exc, EngineError) else exc)
            if on_error is not None:
                on_error(self.load_error)
            return
        progress.close()
        frozen = freeze_startup_heap()
        logger.debug("froze %d start-up objects out of the garbage collector's reach", frozen)
        self.engine = engine
        if on_ready is not None:
            on_ready(engine)

    def shutdown(self) -> None:
        self.frontend.close()  # no request is left to tokenise for
        if self._loader is not None and self._loader.is_alive():
            self._loader.join()  # a half-loaded engine would keep its stepping thread alive
        if self.engine is not None:
            self.engine.shutdown()

    def device_info(self) -> DeviceInfo | None:
        """The engine's hardware report as first read, for /health, which only needs the names
        (ask the engine for free memory now); None while no engine is loaded."""
        if self.engine is None:
            return None
        if self._device_info is None:
            self._device_info = self.engine.device_info()
        return self._device_info


class LoadingProgress:
    """A tqdm bar on stderr that ticks while the model loads (the engine gives no fractions).

    Only on a terminal: in a log file every refresh would become a line of its own."""

    def __init__(self, model: str) -> None:
        from tqdm import tqdm

        interactive = sys.stderr is not None and sys.stderr.isatty()
        if not interactive:
            logger.info("loading %s", model)
        self._done = threading.Event()
        self._bar = tqdm(desc=f"Loading {model}", total=None, file=sys.stderr, leave=False,
                         bar_format="{desc} [{elapsed}]", disable=not interactive)
        self._ticker = threading.Thread(target=self._tick, daemon=True, name="ziggurat-progress")
        self._ticker.start()

    def _tick(self) -> None:
        while not self._done.wait(0.2):
            self._bar.refresh()

    def close(self) -> None:
        self._done.set()
        self._ticker.join()
        self._bar.close()
