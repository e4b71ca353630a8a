"""How Kopf logs in: with the credentials of ``vibe.kubeclient``, so that ``vibe operator --kubeconfig
--context`` points Kopf's watches and the reconciler's client at the same cluster as the same user.

Role: Kopf's own login reads only the default kubeconfig (or the pod's service account); its
``@kopf.on.login`` handler (in ``handlers``) calls ``connection_info`` instead, which loads the
configuration the way every vibe command does and hands Kopf what it needs: the server, the CA, the
client certificate or the bearer token. Kopf calls it again when the API server answers 401, which
re-reads a rotated service-account token.
"""

from __future__ import annotations

import kopf

from vibe.kubeclient import CredentialsError, configuration
from vibe.operator.settings import OperatorSettings


def connection_info(cfg: OperatorSettings, *, trust_env: bool = False) -> kopf.ConnectionInfo:
    """Kopf's connection to the API server, from ``cfg.kubeconfig`` and ``cfg.context``.

    A missing or unusable configuration is a ``kopf.PermanentError`` with ``CredentialsError``'s one
    line (Kopf stops rather than retrying what cannot succeed)."""
    try:
        conf = configuration(cfg.kubeconfig, context=cfg.context)
    except CredentialsError as e:
        raise kopf.PermanentError(str(e)) from None
    # The bearer token, where the credentials have one (a service account, an exec or OIDC plugin):
    # newer clients keep it under BearerToken, older ones under authorization (as Kopf's own login reads).
    header = conf.get_api_key_with_prefix("BearerToken") or conf.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme: str | None = parts[0] if len(parts) == 2 else None  # RFC 7235: "Bearer <token>"
    token: str | None = parts[-1] if parts else None
    return kopf.ConnectionInfo(
        server=conf.host,
        ca_path=conf.ssl_ca_cert,  # files the client wrote for *-data fields
        insecure=not conf.verify_ssl,
        username=conf.username or None,
        password=conf.password or None,
        scheme=scheme,
        token=token,
        certificate_path=conf.cert_file,
        private_key_path=conf.key_file,
        trust_env=trust_env,
    )
