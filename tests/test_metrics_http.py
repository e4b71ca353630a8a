"""The metrics server a slow client cannot exhaust: idle half-sent requests are timed out, and the
connections (so the threads) served at once are bounded; scrapes keep working (issue 20, defect 12)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import urllib.request

from prometheus_client import CollectorRegistry, Gauge

from vibe import metrics_http
from vibe.cluster.waiting import wait_for


def _registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Gauge("vibe_test_up", "1", registry=reg).set(1)
    return reg


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def test_idle_half_sent_requests_neither_pile_up_threads_nor_stay_forever() -> None:
    server = metrics_http.serve(_registry(), 0, "127.0.0.1", timeout=1.0, max_connections=4)
    port = server.server_port
    try:
        assert "vibe_test_up 1.0" in _scrape(port)
        base = threading.active_count()
        idle = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /metr")  # half a request line, then silence
            idle.append(s)
        time.sleep(0.5)
        assert threading.active_count() <= base + 4  # 200 idle clients, at most 4 threads
        # Within the timeout every idle connection is closed by the server, and scraping works again.
        wait_for(lambda: threading.active_count() <= base, timeout=10, interval=0.2, what="idle threads end")
        assert "vibe_test_up 1.0" in _scrape(port)
        for s in idle:
            s.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                assert s.recv(1024) == b""  # the server closed it: nothing is held for it any more
            s.close()
    finally:
        server.shutdown()
        server.server_close()


def test_it_binds_the_address_it_is_given() -> None:
    server = metrics_http.serve(_registry(), 0, "127.0.0.1")
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.shutdown()
        server.server_close()
