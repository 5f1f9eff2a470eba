"""Certificates for the TLS tests, made with the ``openssl`` command.

A CA and certificates it signs, each valid for IP 127.0.0.1 (the address
peers dial on loopback) and DNS localhost, usable by a node both as a
server and as a client (mutual TLS). Used by test_tls.py and, through
:class:`PKI`, by the subprocess nodes of procs.py / test_nodes.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from gobucket_py import TLSConfig

#: Key types for ``openssl req -newkey``: RSA, as an operator would make
#: them (docker/make-tls-certs.sh), or P-256, ten times faster to generate.
RSA = "rsa:2048"
EC = "ec"

HAVE_OPENSSL = shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _newkey(newkey: str) -> list[str]:
    if newkey == EC:
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    return ["-newkey", newkey]


def make_ca(dir: Path, name: str, newkey: str = RSA) -> Path:
    """A self-signed CA ``<name>.pem`` (key ``<name>.key``) in ``dir``."""
    _openssl("req", "-x509", *_newkey(newkey), "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN={name}", cwd=dir)
    return dir / f"{name}.pem"


def make_cert(dir: Path, ca: str, name: str, newkey: str = RSA) -> TLSConfig:
    """A certificate for ``name`` (valid for 127.0.0.1), signed by ``ca``."""
    (dir / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", *_newkey(newkey), "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=dir)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
             cwd=dir)
    return TLSConfig(str(dir / f"{name}.pem"), str(dir / f"{name}.key"), str(dir / f"{ca}.pem"))


class PKI:
    """A cluster CA in ``dir`` and one certificate per name, made on first
    use and kept (``pki["n1"]`` is n1's :class:`TLSConfig`, with the CA).

    ``names`` are made at once, so that making them later does not block a
    running test's event loop (openssl runs synchronously)."""

    def __init__(self, dir: Path, names: tuple[str, ...] = (), ca: str = "cluster-ca",
                 newkey: str = EC) -> None:
        self.dir, self.ca_name, self.newkey = dir, ca, newkey
        self.ca = make_ca(dir, ca, newkey)
        self._certs: dict[str, TLSConfig] = {}
        for name in names:
            self.cert(name)

    def cert(self, name: str) -> TLSConfig:
        """``name``'s certificate, key and the CA (made now if new)."""
        if name not in self._certs:
            self._certs[name] = make_cert(self.dir, self.ca_name, name, self.newkey)
        return self._certs[name]

    __getitem__ = cert
