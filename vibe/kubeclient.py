"""How every vibe process that talks to Kubernetes gets its credentials, and the one error it raises.

Role: the operator, the agent and the serving helpers all run either in a pod (the pod's service
account) or by hand (a kubeconfig: ``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``).
A missing or unreadable configuration becomes ``CredentialsError`` with one line saying what was tried,
so each command can print that line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import ApiClient, Configuration


class CredentialsError(RuntimeError):
    """No usable Kubernetes credentials (neither a pod's service account nor a kubeconfig)."""


def configuration(kubeconfig: str | None = None, *, context: str | None = None) -> Configuration:
    """The ``kubernetes.client.Configuration`` of the given kubeconfig, else in-cluster, else the default
    kubeconfig (``$KUBECONFIG``, ``~/.kube/config``).

    ``context``: the kubeconfig context to use (default: its current context); giving one skips the
    in-cluster service account, as ``kubectl --context`` does. The operator hands the same
    configuration to Kopf (its login handler), so both use one set of credentials.
    """
    import yaml
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if kubeconfig or context:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        else:
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, ValueError, yaml.YAMLError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CredentialsError(
            f"no Kubernetes credentials: not running in a pod (no service account token) and no usable "
            f"kubeconfig at {where} ({detail}); pass --kubeconfig or set KUBECONFIG"
        ) from None
    return cfg


def api_client(
    kubeconfig: str | None = None, *, context: str | None = None, pool_maxsize: int | None = None
) -> ApiClient:
    """A ``kubernetes.client.ApiClient`` of ``configuration(kubeconfig, context=context)``.

    ``pool_maxsize``: HTTP connections kept per host (urllib3's default is 4; a process that runs many
    calls at once in threads wants one per thread).
    """
    from kubernetes import client

    cfg = configuration(kubeconfig, context=context)
    if pool_maxsize:
        cfg.connection_pool_maxsize = pool_maxsize
    return client.ApiClient(cfg)


def as_dict(value: object) -> dict[str, Any]:
    """A custom-object response as the JSON object it is (the generated client declares ``object``)."""
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object from the API server, got {type(value).__name__}")
    return value
