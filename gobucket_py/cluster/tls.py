"""TLS and mutual TLS between peers (optional).

With :class:`TLSConfig` a node listens with HTTPS and dials its peers with
``https://``. ``cert`` and ``key`` are this node's certificate chain and key
(PEM files); with ``ca``, both sides verify each other against it (mutual
TLS: a peer without a certificate from that CA cannot even connect). Peers
are dialled by the address they advertise, so each node's certificate must
name it (a DNS or IP subjectAltName: ``node1``, ``10.0.0.1``). The HMAC
signatures stay on top, as an application-level check.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass

__all__ = ["TLSConfig"]


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """This node's certificate and key, and the CA its peers' certificates
    must come from (``ca``: mutual TLS). Paths to PEM files."""

    cert: str
    key: str
    ca: str | None = None

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            path = getattr(self, name)
            if path is None and name == "ca":
                continue
            if not isinstance(path, str) or not path:
                raise ValueError(f"{name} (--tls-{name}): must be a path to a PEM file, "
                                 f"got {path!r}")
            if not os.path.isfile(path):
                raise ValueError(f"{name} (--tls-{name}): no such file {path!r}")
        self.server_context()  # unreadable or mismatched files fail here, at configuration
        self.client_context()

    def server_context(self) -> ssl.SSLContext:
        """Serves HTTPS; with ``ca``, requires a client certificate from it."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._load(context)
        if self.ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            self._trust(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        """Dials peers: verifies them (against ``ca``, else the system's
        CAs, and by the name they are dialled at) and presents this node's
        certificate."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca is not None:
            context.load_default_certs()
            self._trust(context)
        self._load(context)
        return context

    def _load(self, context: ssl.SSLContext) -> None:
        try:
            context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cert/key (--tls-cert/--tls-key): cannot load {self.cert!r} with "
                             f"{self.key!r}: {exc}") from exc

    def _trust(self, context: ssl.SSLContext) -> None:
        try:
            context.load_verify_locations(cafile=self.ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"ca (--tls-ca): cannot load {self.ca!r}: {exc}") from exc
