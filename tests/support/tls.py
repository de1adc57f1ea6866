"""Self-signed certificates for TLS tests, made by `openssl` (a test skips without it)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Cert:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A new context that trusts this (self-signed) certificate and nothing else."""
        return ssl.create_default_context(cafile=str(self.cert))


def self_signed(folder: Path, name: str, san: str) -> Cert:
    """A certificate for `name` (`san`: its subjectAltName, e.g. "IP:127.0.0.1")."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not on PATH")
    key, crt = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [
            openssl,
            *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName={san}", "-days", "1"),
            *("-keyout", str(key), "-out", str(crt)),
        ],
        check=True,
        capture_output=True,
        timeout=90,
    )
    return Cert(crt, key)
