"""Run ``wbc serve`` as a child process on a free loopback port (browser tests, load benchmark, restart tests)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``with ServerProcess(data_dir) as server: server.url ...``; ``kill()`` simulates a crash (SIGKILL)."""

    def __init__(self, data_dir: Path, *args: str, port: int | None = None, env: dict | None = None,
                 startup_timeout: float = 90.0, nice: int = 0):
        self.data_dir, self.args, self.port = Path(data_dir), list(args), port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.timeout, self.nice = startup_timeout, nice
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.data_dir.parent / f"server-{self.port}.log"

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "wbc.cli", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
               *self.args]
        if self.nice:
            cmd = ["nice", "-n", str(self.nice), *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"wbc serve exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/v1/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"wbc serve did not answer within {self.timeout:.0f} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
