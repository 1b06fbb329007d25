"""The scoring server: ``mlflow models serve`` on a free loopback port, and HTTP to it.

The server runs as a child of this interpreter's environment (``sys.executable -m mlflow``, with
``--env-manager local``) in a process group of its own, and that group is stopped when the
``with`` block ends, whatever ends it. The tracking URI, which may hold a password, reaches the
server through its environment, never its command line.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ServingError
from pipeline.settings import TRACKING_URI_ENV, redact

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
JSON_CONTENT = "application/json"
_POLL_SECONDS = 0.25
_STOP_GRACE_SECONDS = 15.0
_LOG_TAIL_LINES = 5


@dataclass(frozen=True)
class Response:
    """An HTTP answer; status 0 when no answer came (connection refused, timeout)."""

    status: int
    body: str
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)

    def message(self) -> str:
        """The error message of an MLflow error body, else the body itself; on one line."""
        try:
            text = str(self.json().get("message", self.body))
        except (ValueError, AttributeError):
            text = self.body
        return " ".join(text.split())


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def request(url: str, body: str | bytes | None = None, timeout: float = 60.0) -> Response:
    """GET ``url`` (or POST ``body`` as JSON to it) and time the answer; never raises for HTTP errors."""
    data = body.encode("utf-8") if isinstance(body, str) else body
    prepared = urllib.request.Request(
        url, data=data, method="POST" if data is not None else "GET", headers={"Content-Type": JSON_CONTENT}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as answer:
            status, text = answer.status, answer.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode("utf-8", errors="replace")
    except (urllib.error.URLError, OSError) as error:
        status, text = 0, str(getattr(error, "reason", error))
    return Response(status, text, time.perf_counter() - started)


def wait_until_ready(
    url: str, timeout: float, process: subprocess.Popen | None = None, path: str = "/ping"
) -> float:
    """Poll ``url`` + ``path`` until it answers 200; the seconds it took.

    Raises ServingError when ``process`` exits first or ``timeout`` passes.
    """
    started = time.perf_counter()
    while True:
        if request(f"{url}{path}", timeout=5.0).status == 200:
            return time.perf_counter() - started
        if process is not None and process.poll() is not None:
            raise ServingError(f"the scoring server exited with code {process.returncode} before answering")
        if time.perf_counter() - started > timeout:
            raise ServingError(f"the scoring server at {url} did not answer {path} within {timeout:g} s")
        time.sleep(_POLL_SECONDS)


def log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    """The last non-empty lines of a server log, redacted, joined on one line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    return redact(" | ".join(kept))


def stop_process_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group ``process`` leads (a server and its workers), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            pass
    with suppress(ProcessLookupError, PermissionError):  # workers left by a server that exited itself
        os.killpg(process.pid, signal.SIGKILL)


@contextmanager
def scoring_server(
    model_uri: str, tracking_uri: str, startup_timeout: float, log_path: Path
) -> Iterator[tuple[str, float]]:
    """Serve ``model_uri`` on a free loopback port; yields its base URL and its start-up seconds.

    The server's output goes to ``log_path``. Raises ServingError (with the log's last lines)
    when it does not come up.
    """
    port = free_port()
    url = f"http://{HOST}:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "--model-uri",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        HOST,
        "--port",
        str(port),
    ]
    # MLflow starts uvicorn by name: this environment's scripts come first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    environment = {**os.environ, TRACKING_URI_ENV: tracking_uri, "PATH": path}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    logger.info("scoring server for %s starting on %s (pid %d)", model_uri, url, process.pid)
    try:
        try:
            seconds = wait_until_ready(url, startup_timeout, process)
        except ServingError as error:
            tail = log_tail(log_path)
            raise ServingError(f"{error}{': ' + tail if tail else ''}") from None
        logger.info("scoring server answered /ping after %.1f s", seconds)
        yield url, seconds
    finally:
        stop_process_group(process)
