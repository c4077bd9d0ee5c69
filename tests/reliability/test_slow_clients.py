"""Slow and stalled clients against the real server (``sleep-cds serve``, uvicorn, real sockets).

The attack from the security review: clients that send headers and then stall their bodies, more
of them than ``CDS_MAX_CONCURRENT_HOOKS``, used to hold every hook slot for ever. Now a body still
arriving holds no slot, a stalled body ends in 408 after ``CDS_BODY_READ_TIMEOUT_S``, and a
connection that never finishes its headers is closed after ``CDS_HEADER_READ_TIMEOUT_S``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from service.config import Settings
from service.db.migrate import upgrade_database
from tests.factories import PV, patient_view
from tests.reliability.helpers import ServiceProcess

BODY_TIMEOUT_S = 3.0
HEADER_TIMEOUT_S = 2.0
STALLED = 20  # more than the 4 slots below, and more than the default 16


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    tmp_path = tmp_path_factory.mktemp("slow-clients")
    database = f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}"
    upgrade_database(Settings(database_url=database))
    process = ServiceProcess(
        database,
        tmp_path,
        CDS_MAX_CONCURRENT_HOOKS="4",
        CDS_BODY_READ_TIMEOUT_S=str(BODY_TIMEOUT_S),
        CDS_HEADER_READ_TIMEOUT_S=str(HEADER_TIMEOUT_S),
    ).start()
    try:
        yield process
    finally:
        process.stop()


def stalled_body(port: int) -> socket.socket:
    """Headers and the first part of a hook body, then nothing."""
    body = orjson.dumps(patient_view())
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {PV} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body[: len(body) // 2])
    return sock


def read_all(sock: socket.socket, limit_s: float) -> bytes:
    sock.settimeout(limit_s)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_stalled_bodies_hold_no_slot_and_end_in_408(service: ServiceProcess) -> None:
    sockets = [stalled_body(service.port) for _ in range(STALLED)]
    try:
        time.sleep(0.3)  # every stalled request has reached the app
        started = time.perf_counter()
        with httpx.Client(base_url=service.base_url, timeout=10) as client:
            normal = client.post(PV, json=patient_view())
            ready = client.get("/readyz")
        elapsed = time.perf_counter() - started
        assert normal.status_code == 200 and normal.json()["cards"], normal.text
        assert elapsed < 1.5, elapsed  # answered long before the stalled bodies time out
        assert ready.status_code == 200, ready.text
        assert ready.json()["hookSlots"]["busy"] == 0
        answers = [read_all(sock, BODY_TIMEOUT_S + 5) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"application/fhir+json" in head
        outcome = orjson.loads(body)
        assert outcome["issue"][0]["code"] == "timeout"
        assert "not received within 3 s" in outcome["issue"][0]["diagnostics"]


def test_a_trickling_body_ends_in_408_at_the_deadline(service: ServiceProcess) -> None:
    """Bytes keep coming, but too slowly: the deadline counts from the headers, not per byte."""
    sock = stalled_body(service.port)
    started = time.monotonic()
    try:
        sock.settimeout(0.2)
        answer = b""
        while time.monotonic() - started < BODY_TIMEOUT_S + 5 and not answer:
            with contextlib.suppress(OSError):
                sock.sendall(b" ")
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
    finally:
        sock.close()
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 2, elapsed


@pytest.mark.parametrize("mode", ["silent", "slowloris"])
def test_connections_that_never_finish_their_headers_are_closed(
    service: ServiceProcess, mode: str
) -> None:
    sockets = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(STALLED)]
    started = time.monotonic()
    closed_at: dict[int, float] = {}
    try:
        if mode == "slowloris":
            for sock in sockets:
                sock.sendall(f"POST {PV} HTTP/1.1\r\nHost: x\r\n".encode())
        for sock in sockets:
            sock.settimeout(0.1)
        while len(closed_at) < len(sockets) and time.monotonic() - started < HEADER_TIMEOUT_S + 5:
            for i, sock in enumerate(sockets):
                if i in closed_at:
                    continue
                try:
                    if mode == "slowloris":
                        sock.sendall(b"X")  # one header byte at a time, never the blank line
                    if sock.recv(1024) == b"":
                        closed_at[i] = time.monotonic() - started
                except TimeoutError:
                    continue
                except OSError:
                    closed_at[i] = time.monotonic() - started
            time.sleep(0.2)
        # Meanwhile the service answers normal calls.
        assert httpx.get(f"{service.base_url}/healthz", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
    assert len(closed_at) == len(sockets), closed_at
    assert all(HEADER_TIMEOUT_S - 0.5 < t < HEADER_TIMEOUT_S + 3 for t in closed_at.values())
