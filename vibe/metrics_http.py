"""The operator's and the agent's Prometheus ``/metrics`` server, which slow or idle clients cannot exhaust.

``prometheus_client.start_http_server`` starts one thread per connection and waits forever for a
request: 1000 idle, half-sent requests took the operator from 34 to 1034 threads, still held a minute
later (issue 20, defect 12). This server is the same exposition (``prometheus_client``'s own handler) with:

* a socket timeout (``timeout`` seconds per read or write): a connection that stops sending is closed;
* at most ``max_connections`` connections served at once: one more is closed at accept, without a
  thread, so the thread count stays bounded whatever the clients do;
* a bind address (``addr``): ``127.0.0.1`` keeps the endpoint inside the pod (the operator's metrics name
  every MoEDeployment and its condition reasons).

A client that trickles one byte per ``timeout`` can still hold one slot; the bound keeps that from
growing past ``max_connections`` threads.
"""

from __future__ import annotations

import socket
import threading
from http.server import ThreadingHTTPServer
from typing import Any

#: Seconds a connection may stay silent while sending its request or reading the answer.
TIMEOUT_S = 10.0
#: Connections served at once (Prometheus scrapes each target over one connection).
MAX_CONNECTIONS = 16


class BoundedServer(ThreadingHTTPServer):
    """A threading HTTP server with a cap on live connections (and so on threads)."""

    daemon_threads = True
    request_queue_size = 128  # accept quickly (and close the excess), not leave clients in SYN retries

    def __init__(self, address: tuple[str, int], handler: Any, max_connections: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: close it now rather than start one more thread
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(
    registry: Any,
    port: int,
    addr: str = "0.0.0.0",
    *,
    timeout: float = TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> BoundedServer:
    """Serve ``registry`` on ``addr:port`` (``/metrics``, any path) in a daemon thread; ``.shutdown()``
    stops it. ``port`` 0 picks a free one (``server.server_port``)."""
    from prometheus_client.exposition import MetricsHandler

    handler = type("Handler", (MetricsHandler.factory(registry),), {"timeout": timeout})
    server = BoundedServer((addr, port), handler, max_connections)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
