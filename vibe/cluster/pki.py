"""Certificates and keys of the local control plane, generated once per cluster at `up`.

One self-signed CA signs the API server's serving certificate (valid for 127.0.0.1 and the in-cluster
names of the `kubernetes` Service) and the admin client certificate (group ``system:masters``), which the
admin kubeconfig, the controller manager, the scheduler and kwok all use. A second CA signs only the
front-proxy client certificate of the aggregation layer. A separate key pair signs service-account
tokens. ECDSA P-256 throughout: generating it takes microseconds, where RSA takes
tens of milliseconds per key, and every Kubernetes component accepts it.

Files land in ``<state>/pki`` as PEM; nothing here talks to a process.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as e:  # the runtime images install vibe without the local cluster's extra
    raise ImportError(
        f"the local control plane needs the 'cluster' extra: pip install 'vibe-operator[cluster]' ({e})"
    ) from e

# The first address of the service CIDR given to the API server (`--service-cluster-ip-range`).
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files one cluster uses."""

    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def serving_cert(self) -> Path:
        return self.dir / "apiserver.crt"

    @property
    def serving_key(self) -> Path:
        return self.dir / "apiserver.key"

    @property
    def admin_cert(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    @property
    def front_proxy_ca(self) -> Path:
        return self.dir / "front-proxy-ca.crt"

    @property
    def front_proxy_cert(self) -> Path:
        return self.dir / "front-proxy-client.crt"

    @property
    def front_proxy_key(self) -> Path:
        return self.dir / "front-proxy-client.key"

    @property
    def sa_key(self) -> Path:
        """Private key signing service-account tokens (API server and controller manager)."""
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        """Public key verifying service-account tokens."""
        return self.dir / "sa.pub"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


class _Ca:
    """A self-signed certificate authority that can sign leaf certificates."""

    def __init__(self, cn: str) -> None:
        self.key = _key()
        self.name = _name(cn)
        usage = x509.KeyUsage(
            digital_signature=True,
            key_cert_sign=True,
            crl_sign=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
        )
        self.cert = (
            _builder(self.name, self.name, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def sign(
        self,
        cn: str,
        org: str | None,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = _key()
        builder = (
            _builder(_name(cn, org), self.name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(self.key, hashes.SHA256())


FRONT_PROXY_CLIENT = "front-proxy-client"


def generate(pki_dir: Path, cluster_name: str) -> Pki:
    """Write fresh CAs, certificates and the service-account key pair into ``pki_dir``."""
    pki = Pki(pki_dir)
    pki_dir.mkdir(parents=True, exist_ok=True)
    pki_dir.chmod(0o700)

    ca = _Ca(f"{cluster_name}-ca")
    _write_key(pki.ca_key, ca.key)
    _write_cert(pki.ca_cert, ca.cert)

    dns = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ]
    ips = ["127.0.0.1", KUBERNETES_SERVICE_IP]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    key, cert = ca.sign("kube-apiserver", None, ExtendedKeyUsageOID.SERVER_AUTH, sans)
    _write_key(pki.serving_key, key)
    _write_cert(pki.serving_cert, cert)

    key, cert = ca.sign("vibe-admin", "system:masters", ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki.admin_key, key)
    _write_cert(pki.admin_cert, cert)

    # The aggregation layer's front proxy needs a CA of its own: the API server refuses a request-header
    # CA that also signs ordinary client certificates.
    front = _Ca(f"{cluster_name}-front-proxy-ca")
    _write_cert(pki.front_proxy_ca, front.cert)
    key, cert = front.sign(FRONT_PROXY_CLIENT, None, ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_key(pki.front_proxy_key, key)
    _write_cert(pki.front_proxy_cert, cert)

    sa = _key()
    _write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
