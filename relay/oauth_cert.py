"""A client assertion signed with a certificate's key (RFC 7523), instead of a client secret.

Microsoft recommends certificates over secrets for app registrations: the private key never
leaves this machine, and what travels is a short-lived signed JWT naming the certificate by
its thumbprint (x5t, and x5t#S256).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

LIFETIME = 300  # seconds an assertion is valid: it is made fresh for each grant


class CertificateError(Exception):
    """The certificate or its key cannot be used; says which and why."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def certificate_assertion(
    cert_file: Path, key_file: Path, client_id: str, token_url: str
) -> Callable[[], str]:
    """Load the certificate and RSA key once; return a maker of fresh assertions."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot load certificate {cert_file}: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateError(f"cannot load key {key_file}: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(f"{key_file} is not an RSA key (RS256 needs one)")
    header = {
        "alg": "RS256",
        "typ": "JWT",
        "x5t": _b64url(cert.fingerprint(hashes.SHA1())),  # noqa: S303 - the JWT header's name
        "x5t#S256": _b64url(cert.fingerprint(hashes.SHA256())),
    }

    def make() -> str:
        now = int(time.time())
        claims = {
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": str(uuid.uuid4()),
            "iat": now,
            "nbf": now,
            "exp": now + LIFETIME,
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    return make
