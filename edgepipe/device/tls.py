"""The agent's own TLS certificate (``agent serve --tls``), and how hosts pin it.

The certificate is self-signed and made once, by the ``openssl`` command, into
``DATA/tls/`` (``cert.pem``, and ``key.pem`` readable by its owner only); later starts reuse
it. No certificate authority vouches for it: the host pins its SHA-256 fingerprint
(``edgepipe device add --url https://... --fingerprint ...``) and refuses any other.

Why the ``openssl`` command and not the ``cryptography`` package: the command is already on
Raspberry Pi OS and Debian (``ca-certificates`` depends on it) and adds nothing to the
agent's install, where ``cryptography`` is a compiled wheel of several MB (and a Rust build
where no wheel exists, as on Termux). Reading a certificate's fingerprint needs neither: the
standard library's ``ssl`` does it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from ..errors import EdgepipeError

CERT_DAYS = 3650


def fingerprint_of_der(der: bytes) -> str:
    """The SHA-256 fingerprint of a DER certificate: 64 lowercase hex digits."""
    return hashlib.sha256(der).hexdigest()


def certificate_fingerprint(cert: Path) -> str:
    """The SHA-256 fingerprint of a PEM certificate file."""
    return fingerprint_of_der(ssl.PEM_cert_to_DER_cert(cert.read_text()))


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as given (``AB:CD:...`` as openssl prints it, or plain hex, with an
    optional ``sha256`` prefix) as 64 lowercase hex digits; EdgepipeError otherwise."""
    value = text.strip().lower().removeprefix("sha256").lstrip(":= ").replace(":", "")
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise EdgepipeError(f"'{text[:100]}' is not a SHA-256 fingerprint (64 hex digits, "
                            "colons allowed): copy the one `edgepipe agent serve --tls` prints")
    return value


def ensure_certificate(data: Path, host: str = "edgepipe-agent") -> tuple[Path, Path]:
    """(certificate, key) in ``data/tls``, made now when missing (EC P-256, self-signed,
    valid 10 years). EdgepipeError when ``openssl`` is not installed or fails."""
    folder = data / "tls"
    cert, key = folder / "cert.pem", folder / "key.pem"
    if cert.is_file() and key.is_file():
        return cert, key
    openssl = shutil.which("openssl")
    if openssl is None:
        raise EdgepipeError("--tls makes the agent's certificate with the `openssl` command, "
                            "which is not installed: install it (apt install openssl; Termux: "
                            "pkg install openssl-tool), or reach the agent through ssh")
    data.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tls-", dir=data))  # 0700: the key stays private
    try:
        done = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", str(CERT_DAYS),
             "-subj", f"/CN={host}", "-keyout", str(staging / "key.pem"),
             "-out", str(staging / "cert.pem")], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            raise EdgepipeError(f"openssl could not make the agent's certificate: {last}")
        os.chmod(staging / "key.pem", 0o600)
        os.chmod(staging, 0o755)
        os.replace(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cert, key
