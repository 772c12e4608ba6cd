"""Real server processes for the tests: `segments serve` (and anything else) started and stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

STARTUP_SECONDS = 60.0
STOP_SECONDS = 30.0


@dataclass(frozen=True)
class Service:
    base: str
    port: int
    metrics_dir: Path
    log: Path
    pid: int  # the server process (with one worker, the one that serves)
    process: subprocess.Popen[bytes]  # the same, to signal and wait for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate, wait, and kill if it does not go."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_SECONDS)


def processes(matches: Callable[[int, list[bytes]], bool]) -> list[int]:
    """The processes whose (parent pid, command line) `matches` says yes to."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if matches(parent, command):
            found.append(int(entry.name))
    return found


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def wait_until_ready(url: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            if httpx2.get(url, timeout=5).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        if process.poll() is not None:
            pytest.fail(
                f"{what} exited with {process.returncode} before {url} answered 200:\n{tail(log)}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready within {STARTUP_SECONDS:.0f} s ({url}):\n{tail(log)}")
        time.sleep(0.2)


def wait_for_workers(log: Path, workers: int, process: subprocess.Popen[bytes]) -> None:
    """One worker answering is not all of them: a test spreading requests over the workers
    (or switching models under load) starts once each has finished its start-up."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while log.read_bytes().count(b"Application startup complete.") < workers:
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"not all {workers} workers started:\n{tail(log)}")
        time.sleep(0.1)


@contextmanager
def segments_server(
    database_url: str, model_dir: Path, folder: Path, workers: int = 2, **env: str
) -> Iterator[Service]:
    """`segments serve --workers N` on a free port, ready, stopped afterwards.

    The metrics folder exists already (as a Kubernetes emptyDir would) and holds a stale file
    from an "earlier run", which `serve` must clear before the workers start.
    """
    port = free_port()
    metrics_dir = folder / "prometheus-multiproc"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale counts from an earlier run")
    environment = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "SEGMENTS_DRIFT_CACHE_SECONDS": "0",
        "SEGMENTS_ALLOW_ANONYMOUS": "true",
        "SEGMENTS_ERASURE_KEY": "tests-erasure-key",
        **env,
    }
    segments = Path(sys.executable).with_name("segments")
    command = [
        str(segments),
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    log = folder / "server.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base}/readyz", process, log, "segments serve")
        wait_for_workers(log, workers, process)
        yield Service(
            base=base,
            port=port,
            metrics_dir=metrics_dir,
            log=log,
            pid=process.pid,
            process=process,
        )
    finally:
        stop(process)
