"""``detkit serve`` as a subprocess on a free port of 127.0.0.1, ready to take requests: what the tests,
``tools/bench.py serve`` and ``tools/serve_page.py`` start, and what your own integration tests can use::

    from detkit.serve.launch import ServerProcess
    with ServerProcess("best.pth", "--max-batch", "8") as server:
        requests.post(f"{server.url}/v1/detect", files={"file": open("photo.jpg", "rb")})

The server's output goes to a log file (``server.log_path``); when it exits before it is ready, the
error says so with the end of that log. Only the standard library is used here.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["ServerProcess", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m detkit serve MODEL --host 127.0.0.1 --port <free> *args`` for a ``with`` block: the
    block starts once ``GET /readyz`` answers 200 (at most ``timeout`` seconds) and the server is
    stopped (SIGTERM, then SIGKILL after 20 s) when it ends."""

    def __init__(self, model: str | os.PathLike, *args: str, timeout: float = 180.0, env: dict | None = None,
                 log_path: str | os.PathLike | None = None):
        self.host, self.port = "127.0.0.1", free_port()
        self.command = [sys.executable, "-m", "detkit", "serve", str(model), "--host", self.host,
                        "--port", str(self.port), *args]
        self.timeout, self.env = timeout, env
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="detkit-serve-", suffix=".log")[1])
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> ServerProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env={**os.environ, **(self.env or {})})
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"detkit serve exited with status {self.process.returncode} before it was "
                                   f"ready:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"detkit serve was not ready within {self.timeout:.0f} s:\n{self.log()[-3000:]}")

    def stop(self) -> int | None:
        """Stop the server (gracefully first); returns its exit status."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
