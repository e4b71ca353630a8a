"""The http and report policies (restart is exercised against a real API server in the cluster test)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from vibe.serving import update_policies as policies
from vibe.serving.errors import ServingError

UPDATE = policies.Update(7, "abc123", {"sglang": {"physical_to_logical_map": [[0, 1]]}})


@pytest.fixture
def endpoint() -> Iterator[tuple[str, list, dict]]:
    received: list[tuple[dict, dict]] = []
    answer = {"status": 200}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), json.loads(body)))
            self.send_response(answer["status"])
            self.end_headers()
            self.wfile.write(b"nope" if answer["status"] >= 400 else b"ok")

        def log_message(self, *a) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_port}/expert_location", received, answer
    server.shutdown()


def test_http_posts_the_engine_document(endpoint) -> None:
    url, received, _ = endpoint
    result = policies.HttpPolicy(url, token="t0k").apply(UPDATE)
    assert result.endswith("HTTP 200")
    headers, body = received[0]
    assert body == UPDATE.documents["sglang"]
    assert headers["X-Vibe-Placement-Generation"] == "7"
    assert headers["X-Vibe-Content-Hash"] == "abc123"
    assert headers["Authorization"] == "Bearer t0k"


def test_http_failure_is_apply_failed(endpoint) -> None:
    url, _, answer = endpoint
    answer["status"] = 503
    with pytest.raises(ServingError, match="HTTP 503: nope") as e:
        policies.HttpPolicy(url).apply(UPDATE)
    assert e.value.reason == "ApplyFailed"
    with pytest.raises(ServingError, match="failed"):
        policies.HttpPolicy("http://127.0.0.1:1/x", timeout=2).apply(UPDATE)


def test_make_policy() -> None:
    said = []
    report = policies.make_policy("report", lambda *a: said.append(a))
    assert report.apply(UPDATE) == "reported" and said[0][1] == "PlacementAvailable"
    restart = policies.make_policy("restart", said.append, restart=lambda g, u: True, target="Deployment/x")
    assert restart.apply(UPDATE) == "restarting Deployment/x"
    eplb = policies.make_policy("eplb", lambda *a: said.append(a))  # vLLM moves the experts itself
    assert eplb.apply(UPDATE) == "left to vLLM's EPLB" and "next rebalance" in said[-1][2]
    with pytest.raises(ServingError, match="needs the sidecar's --url"):
        policies.make_policy("http", said.append)
    with pytest.raises(ServingError, match="needs the Kubernetes API"):
        policies.make_policy("restart", said.append)
    with pytest.raises(ServingError, match="unknown policy"):
        policies.make_policy("yolo", said.append)
    with pytest.raises(ServingError, match="http"):
        policies.HttpPolicy("ftp://x")


@pytest.mark.parametrize(
    ("spec", "expected", "refused"),
    [
        (None, "http://engine:30000/a", False),
        ("/b?x=1", "http://engine:30000/b?x=1", False),
        ("http://ENGINE:30000/c", "http://engine:30000/c", False),
        ("http://engine:30000", "http://engine:30000/", False),
        ("http://elsewhere:30000/c", "http://engine:30000/a", True),  # another host
        ("http://engine:30001/c", "http://engine:30000/a", True),  # another port
        ("https://engine:30000/c", "http://engine:30000/a", True),  # another scheme
        ("http://engine:30000@elsewhere/c", "http://engine:30000/a", True),  # userinfo trick
        ("//elsewhere/c", "http://engine:30000/a", True),  # scheme-relative
        ("http://engine:x/c", "http://engine:30000/a", True),  # no port number
    ],
)
def test_the_spec_endpoint_is_only_a_path_on_the_pods_url(spec, expected, refused) -> None:
    url, why = policies.resolve_endpoint("http://engine:30000/a", spec)
    assert url == expected and bool(why) == refused


def test_without_a_url_the_spec_endpoint_decides_nothing() -> None:
    url, why = policies.resolve_endpoint(None, "http://elsewhere/collect")
    assert url is None and "--url" in why
