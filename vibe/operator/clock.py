"""Time as the API writes it: timezone-aware UTC datetimes, RFC 3339 strings with a ``Z``.

Role: one place for "now" and its text form, so conditions, annotations and cooldowns agree (and tests
can pass their own ``now``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def iso(t: dt.datetime) -> str:
    """RFC 3339 in UTC, whole seconds (as metav1.Time)."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: Any) -> dt.datetime | None:
    """An RFC 3339 string as an aware datetime (naive ones are UTC); None when empty or unreadable."""
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
