"""What the sidecar does with a new, checked placement: restart, call an endpoint, leave it to vLLM, report.

The MoEDeployment chooses (``spec.serving.onUpdate``, else the ``--policy`` flag):

* ``restart`` -- patch the owning workload's pod-template annotation ``vibe.dev/placement-generation``
  (what ``kubectl rollout restart`` does with its own annotation). The workload controller rolls the
  pods; each new pod's init container writes the new placement before its engine starts. This is the
  only policy that works with upstream SGLang today, which reads ``--init-expert-location`` once, at start.
* ``http`` -- POST the engine document (the fitted ``--init-expert-location`` JSON, or the EPLB tensors)
  to the pod's own ``--url``, with the generation and hash in headers, for an engine or adapter that can
  move experts live. A non-2xx answer is a failure and is retried; the placement is recorded as applied
  only after a 2xx. Redirects are not followed (a 3xx is a failure), so the bearer token goes to
  ``--url``'s host and nowhere else.
* ``eplb`` -- vLLM with vibe's EPLB policy plugin (``vibe.serving.vllm_plugin``) reads the same mounted
  ConfigMap itself at its next EPLB rebalance and moves the expert weights live; the sidecar only checks
  it (the ``vllm`` document fitted as usual) and leaves a ``PlacementAvailable`` Event saying so.
* ``report`` -- log it and leave a ``PlacementAvailable`` Event; a person or another controller acts.

Where a serving pod sends data and credentials is the pod's own configuration, never the MoEDeployment's:
whoever may edit a MoEDeployment must not be able to collect the pods' tokens or make them reach other
URLs. ``spec.serving.endpoint`` can only choose a path on ``--url``'s origin (``resolve_endpoint``); a URL
of another scheme, host or port is refused and ``--url`` is used as configured.

Every policy gets the same ``Update``: the placement was already read from one snapshot, hash-checked,
ordered by the never-older rule and fitted to the engine before any policy sees it.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vibe.serving.errors import ServingError

log = logging.getLogger(__name__)

POLICIES = ("restart", "http", "eplb", "report")


@dataclass(frozen=True)
class Update:
    """A placement ready to apply.

    Attributes:
        generation: its placement generation.
        content_hash: the declared hash (or the locally computed one when none was declared).
        documents: engine name ("sglang", "eplb") -> fitted document.
        uid: the MoEDeployment UID the generation counts in (None: not written by the operator).
    """

    generation: int
    content_hash: str
    documents: dict[str, dict[str, Any]]
    uid: str | None = None


class Reporter(Protocol):
    def __call__(self, type_: str, reason: str, message: str) -> None: ...


class Policy(Protocol):
    name: str

    def apply(self, update: Update) -> str:
        """Apply ``update``; return a short description; raise ServingError(ApplyFailed) on failure."""
        ...


class ReportPolicy:
    """Only tell: the Event and the log line are the whole action."""

    name = "report"
    #: What the Event says after "placement generation N (hash)", and what ``apply`` returns.
    _says = " is available; policy 'report' leaves applying it to you"
    _result = "reported"

    def __init__(self, report: Reporter) -> None:
        self._report = report

    def apply(self, update: Update) -> str:
        self._report(
            "Normal",
            "PlacementAvailable",
            f"placement generation {update.generation} ({update.content_hash[:12]}){self._says}",
        )
        return self._result


class EplbPolicy(ReportPolicy):
    """vLLM's EPLB applies the placement itself (vibe's policy plugin reads the mounted ConfigMap)."""

    name = "eplb"
    _says = (
        " is mounted; vLLM's EPLB applies it at its next rebalance (--eplb-config step_interval) once"
        " every EP rank sees it"
    )
    _result = "left to vLLM's EPLB"


class RestartPolicy:
    """Roll the workload by bumping its pod-template annotation.

    ``restart`` is ``kube.restart_workload`` bound to an API client, called with the generation and the
    MoEDeployment UID it counts in; injected so tests can fake it.
    """

    name = "restart"

    def __init__(self, restart: Callable[[int, str | None], bool], target: str) -> None:
        self._restart = restart
        self._target = target

    def apply(self, update: Update) -> str:
        changed = self._restart(update.generation, update.uid)
        return f"{'restarting' if changed else 'already restarting'} {self._target}"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:  # a port that is not a number
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def resolve_endpoint(url: str | None, spec_endpoint: str | None) -> tuple[str | None, str]:
    """The URL the http policy may POST to: ``url`` (the pod's ``--url``), with the path of
    ``spec_endpoint`` (the MoEDeployment's ``spec.serving.endpoint``) when that is a path or a URL on the
    same origin (scheme, host, port) as ``url``.

    Returns:
        ``(url to use, why spec_endpoint was not used or "")``. Without ``url`` the answer is
        ``(None, ...)``: the spec alone never decides where a pod sends its token.
    """
    if not spec_endpoint:
        return url, ""
    if not url:
        return None, (
            f"spec.serving.endpoint {spec_endpoint!r} is not used: the http policy posts only to the pod's"
            " own --url (the endpoint may only choose a path on it)"
        )
    if spec_endpoint.startswith("/") and not spec_endpoint.startswith("//"):
        path = spec_endpoint
    elif _origin(spec_endpoint) == _origin(url) and _origin(url)[1]:
        split = urllib.parse.urlsplit(spec_endpoint)
        path = urllib.parse.urlunsplit(("", "", split.path or "/", split.query, ""))
    else:
        scheme, host, port = _origin(spec_endpoint)
        return url, (
            f"spec.serving.endpoint points at {scheme}://{host}:{port}, not at this pod's --url origin;"
            f" refusing to send the placement and the pod's token there, posting to {url} instead"
        )
    base = urllib.parse.urlsplit(url)
    split = urllib.parse.urlsplit(path)
    return urllib.parse.urlunsplit((base.scheme, base.netloc, split.path, split.query, "")), ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would re-send the Authorization header to wherever a 3xx points."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirect)


class HttpPolicy:
    """POST the engine document to an endpoint (the pod's ``--url``; see ``resolve_endpoint``)."""

    name = "http"

    def __init__(
        self, url: str, document: str = "sglang", timeout: float = 30.0, token: str | None = None
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ServingError("InvalidArgument", f"--url must be an http(s) URL, got {url!r}")
        self.url, self.document, self.timeout, self.token = url, document, timeout, token

    def apply(self, update: Update) -> str:
        if self.document not in update.documents:
            raise ServingError(
                "InvalidArgument", f"http policy posts the {self.document} document, which was not prepared"
            )
        body = json.dumps(update.documents[self.document], sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Vibe-Placement-Generation": str(update.generation),
            "X-Vibe-Content-Hash": update.content_hash,
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace")
            raise ServingError("ApplyFailed", f"POST {self.url} answered HTTP {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ServingError("ApplyFailed", f"POST {self.url} failed: {getattr(e, 'reason', e)}") from None
        return f"POST {self.url} -> HTTP {status}"


def make_policy(
    name: str,
    report: Reporter,
    restart: Callable[[int, str | None], bool] | None = None,
    target: str = "",
    url: str | None = None,
    document: str = "sglang",
    token: str | None = None,
) -> Any:
    """Build the named policy from its parts (``restart`` needs ``restart``; ``http`` needs ``url``)."""
    if name == "report":
        return ReportPolicy(report)
    if name == "eplb":
        return EplbPolicy(report)
    if name == "restart":
        if restart is None:
            raise ServingError(
                "InvalidArgument", "policy 'restart' needs the Kubernetes API and a target workload"
            )
        return RestartPolicy(restart, target)
    if name == "http":
        if not url:
            raise ServingError(
                "InvalidArgument",
                "policy 'http' needs the sidecar's --url"
                " (spec.serving.endpoint may only choose a path on it)",
            )
        return HttpPolicy(url, document, token=token)
    raise ServingError("InvalidArgument", f"unknown policy {name!r}; use one of {', '.join(POLICIES)}")
