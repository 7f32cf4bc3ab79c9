"""Run `ziggurat-server serve` as a real subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai

START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ziggurat_server.cli", *args]


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without ZIGGURAT_* settings that would leak into the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIGGURAT_")}
    env.update(extra)
    return env


class ServerProcess:
    """A server subprocess; stdout and stderr go to files (a full pipe would block it)."""

    def __init__(self, log_dir: Path, *serve_args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"server-{self.port}.out"
        self.stderr_path = log_dir / f"server-{self.port}.err"
        command = server_command("serve", "--host", "127.0.0.1", "--port", str(self.port),
                                 *serve_args)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err,
                                            env=env if env is not None else clean_environment())

    def logs(self) -> str:
        return (f"--- stdout ---\n{self.stdout_path.read_text(errors='replace')}\n"
                f"--- stderr ---\n{self.stderr_path.read_text(errors='replace')[-20000:]}")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Poll /health until it answers 200 ("ok")."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}\n{self.logs()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s\n{self.logs()}")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextlib.contextmanager
def default_model_sdk(log_dir: Path) -> Iterator[openai.OpenAI]:
    """A server of the default model (SmolLM2) and an openai SDK client for it, for the tests
    that need a model which follows instructions; stopped on exit."""
    server = ServerProcess(log_dir, "--model", "default")
    server.wait_ready()
    try:
        with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0,
                           timeout=600) as client:
            yield client
    finally:
        server.stop()
