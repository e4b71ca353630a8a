"""The one error the serving helpers raise on bad input or a placement that does not fit the engine.

Serving pods run these helpers as init containers and sidecars, where the only thing a person sees is the
container's last log line and its exit code. So every expected failure (a placement for another EP size,
a half-written volume, a dump of the wrong shape, an engine that refused the update) becomes a
``ServingError`` whose ``str()`` is one line a person can act on, and whose ``reason`` is a CamelCase
word used as the Kubernetes Event reason. Bugs stay ordinary exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vibe.engines.errors import EngineError, ReasonedError

#: The reasons in use (Event reasons; tests and callers may switch on them).
REASONS = (
    "MissingPlacement",  # the mounted ConfigMap lacks the key the engine needs
    "UnreadableVolume",  # the volume kept changing under the reader, or a file is not JSON
    "StaleVolume",  # the mounted ConfigMap is still behind the generation this pod was rolled out for
    "PodsNotScheduled",  # the engine group's pods were not all scheduled in time (ranks unknown)
    "HashMismatch",  # the data does not match its content hash
    "PlacementMismatch",  # the placement does not fit the engine's EP size / redundant experts / layers
    "UnsupportedArchitecture",  # the engine ignores a placement for this model (vibe.engines.sglang)
    "InvalidDump",  # an expert-distribution dump of an unexpected shape
    "InvalidArgument",  # a flag combination that cannot work
    "ApplyFailed",  # the policy (restart patch, HTTP call, Event) failed
    "MissingDependency",  # torch (.pt files), safetensors (TensorRT-LLM statistics), the Kubernetes client
    "NoCredentials",  # neither a pod's service account nor a kubeconfig to reach the API server
)


class ServingError(ReasonedError):
    """Bad input to, or a failed action of, the serving helpers.

    Attributes:
        reason: CamelCase reason, one of ``REASONS``.
    """

    REASONS = REASONS


def from_engine(e: EngineError) -> ServingError:
    """The ``ServingError`` of an engine record's error (same reason, same message)."""
    return ServingError(e.reason, e.message)


@contextlib.contextmanager
def engine_errors() -> Iterator[None]:
    """Turn an ``EngineError`` raised inside the block into the ``ServingError`` callers handle."""
    try:
        yield
    except EngineError as e:
        raise from_engine(e) from None
