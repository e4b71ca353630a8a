"""Idle, half-sent requests against a metrics endpoint (issue 20, defect 12): threads held, and for how long.

Each server runs in a fresh child process: ``prometheus_client.start_http_server`` (what the operator and
the agent used before; the baseline) and ``vibe.metrics_http.serve`` (now). The parent opens ``--clients``
connections that each send half a request and then stay silent, and reads the child's thread count
(``/proc/<pid>/status``) before, 1 s after, and ``--hold`` seconds after (past the 10 s timeout), then
tries one scrape. Linux only (``/proc``).

Usage::

    .venv/bin/python benchmarks/metrics_flood.py --clients 1000 --hold 15

Prints a markdown table (``--json FILE`` also writes the figures).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no Threads line")


def _serve(kind: str, port: Any, stop: Any) -> None:
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    Gauge("flood_up", "1", registry=registry).set(1)
    if kind == "prometheus_client.start_http_server":
        from prometheus_client import start_http_server

        server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    else:
        from vibe import metrics_http

        server = metrics_http.serve(registry, 0, "127.0.0.1")
    port.value = server.server_port
    stop.wait()


def _scrape(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return b"flood_up 1.0" in r.read()
    except OSError:
        return False


def flood(kind: str, clients: int, hold: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    port, stop = ctx.Value("i", 0), ctx.Event()
    child = ctx.Process(target=_serve, args=(kind, port, stop), daemon=True)
    child.start()
    try:
        deadline = time.monotonic() + 30
        while not port.value and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid is not None and _scrape(port.value)
        before = _threads(child.pid)
        idle = []
        for _ in range(clients):
            s = socket.create_connection(("127.0.0.1", port.value), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            idle.append(s)
        time.sleep(1)
        during = _threads(child.pid)
        time.sleep(max(0.0, hold - 1))
        after = _threads(child.pid)
        scrape = _scrape(port.value)
        for s in idle:
            s.close()
        return {"server": kind, "before": before, "during": during, "after": after, "scrape_after": scrape}
    finally:
        stop.set()
        child.join(10)
        if child.is_alive():
            child.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=15.0, help="seconds after the flood to count again")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [
        flood(kind, args.clients, args.hold)
        for kind in ("prometheus_client.start_http_server", "vibe.metrics_http.serve")
    ]
    print(f"{args.clients} idle half-sent requests; threads of the serving process\n")
    hold = f"{args.hold:.0f} s after"
    print(f"| server | before | 1 s after | {hold} | scrape works after | extra threads vs before |")
    print("|---|---:|---:|---:|---|---:|")
    base = max(1, rows[0]["during"] - rows[0]["before"])
    for r in rows:
        extra = r["during"] - r["before"]
        print(
            f"| {r['server']} | {r['before']} | {r['during']} | {r['after']} | {r['scrape_after']} |"
            f" {extra} (x{extra / base:.3f}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
