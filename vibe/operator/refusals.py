"""The API server's refusals (HTTP 4xx) as ``Problem``s: a condition with a reason, not a traceback.

Role: a 4xx answer is about the request (a forbidden verb, an invalid object, a name the API server
cannot route), so retrying it at once changes nothing; it must reach the person who can fix it. The
reconciler turns each into ``Forbidden`` (RBAC or an admission policy said no) or ``APIRefused`` (any
other 4xx), with the status code and the API server's own message; 404 (gone) and 409 (conflict) are
ordinary outcomes handled where they happen.
"""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from vibe.operator.problems import Problem


def refused(e: ApiException) -> bool:
    """A 4xx other than 404 and 409."""
    return isinstance(e.status, int) and 400 <= e.status < 500 and e.status not in (404, 409)


def problem(e: ApiException, what: str) -> Problem:
    message = _message(e)
    if e.status == 403:
        return Problem(
            "Forbidden",
            f"the API server refused {what} (403): {message}; the operator's RBAC or an admission policy "
            "does not allow it (see docs/operations.md, RBAC)",
        )
    return Problem("APIRefused", f"the API server refused {what} ({e.status} {e.reason}): {message}")


def _message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except (json.JSONDecodeError, AttributeError, TypeError):
        return str(e.reason)
