"""HMAC-SHA256 request signing between peers, with key rotation and replay defence.

A signed request carries four headers::

    X-Gobucket-Key        key id (two keys may be active during a rotation)
    X-Gobucket-Timestamp  unix seconds, refused when more than max_skew away
    X-Gobucket-Nonce      random, refused when seen before with the same timestamp
    X-Gobucket-Signature  hex HMAC-SHA256 over "METHOD\\nPATH\\nTS\\nNONCE\\nsha256(body)"

A keyring is written ``"secret"`` or ``"id1=secret1,id2=secret2"``; the first
key signs, every key verifies. Rotate by deploying ``new=...,old=...`` to every
node, then dropping ``old``.

Replay defence: a nonce is remembered, under its timestamp, until that
timestamp leaves the skew window (a replay of it is then refused as stale),
never earlier. The store holds at most ``MAX_NONCES``; when it is full a new
request is refused with :class:`ReplayStoreFull` (HTTP 503, counted in
``Keyring.refused_full``) rather than forgetting a nonce early. Memory bound:
about 106 bytes per nonce when they share a timestamp second, and about
136 bytes at the full rate (one set per second, each sized for its own
count; measured by ``python -m bench flood``), so the 2,000,000 nonces of
33,000 signed requests per second sustained over a 60 s window
(``max_skew`` 30 s each way) take about 272 MB; a node's peers send far
fewer (their messages are batched), and a forger without the key gets no
further than the signature check, so it cannot fill the store.
A wall-clock step backwards by more than the window can make a forgotten
timestamp fresh again: keep clocks synchronised (NTP slews).

:meth:`Keyring.check_headers` judges the headers alone, so a request that
is unsigned, stale or under an unknown key is refused before its body is read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

from ..config import check_positive

__all__ = ["AuthError", "Keyring", "ReplayStoreFull"]

KEY, TS, NONCE, SIG = ("X-Gobucket-Key", "X-Gobucket-Timestamp", "X-Gobucket-Nonce",
                       "X-Gobucket-Signature")

#: Replay store bound (see the module docstring): beyond it, new requests are
#: refused (503) until old timestamps leave the window.
MAX_NONCES = 2_000_000


class AuthError(Exception):
    """A request is unsigned, badly signed, stale or replayed (HTTP 401)."""


class ReplayStoreFull(AuthError):
    """Too many fresh nonces to remember one more: refused for now (HTTP 503)."""


def _digest(key: bytes, method: str, path: str, ts: str, nonce: str, body: bytes) -> str:
    body_hash = hashlib.sha256(body).hexdigest()
    text = f"{method}\n{path}\n{ts}\n{nonce}\n{body_hash}".encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


class Keyring:
    """Shared secrets: the first signs, all verify. See the module docstring."""

    def __init__(self, keys: Mapping[str, str], *, max_skew: float = 30.0) -> None:
        if not keys:
            raise ValueError("secret must hold at least one key")
        check_positive("max_skew", max_skew)
        for key_id, secret in keys.items():
            if (not isinstance(key_id, str) or not key_id or "," in key_id or "=" in key_id
                    or not key_id.isascii() or not key_id.isprintable() or " " in key_id):
                # (it travels in a header: printable ASCII without spaces)
                raise ValueError(f"secret key id {key_id!r} is invalid: use printable ASCII "
                                 "without spaces, ',' or '='")
            if not isinstance(secret, str) or len(secret) < 8:
                raise ValueError(f"secret for key {key_id!r} must be a string of >= 8 characters")
        self._keys = {k: v.encode() for k, v in keys.items()}
        self.primary = next(iter(keys))
        self.max_skew = max_skew
        #: Timestamp (unix seconds) -> nonces seen with it, while it is fresh.
        self._seen: dict[int, set[str]] = {}
        self._count = 0
        self._pruned = 0.0
        #: Requests refused because the replay store was full.
        self.refused_full = 0

    @classmethod
    def parse(cls, spec: str, *, max_skew: float = 30.0) -> Keyring:
        """``"secret"`` or ``"id1=secret1,id2=secret2"`` (first one signs)."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("secret must be a non-empty string")
        parts = [part.strip().partition("=") for part in spec.split(",")]
        # An entry is id=secret when both sides hold something; '=' only at
        # the end is base64 padding: then the whole spec is one secret.
        pairs = [bool(sep and key_id.strip() and secret.strip().strip("="))
                 for key_id, sep, secret in parts]
        if not any(pairs):
            return cls({"k0": spec.strip()}, max_skew=max_skew)
        if not all(pairs):
            raise ValueError("secret: every entry of a key list must be id=secret "
                             f"({pairs.count(False)} of {len(pairs)} are not)")
        return cls({key_id.strip(): secret.strip() for key_id, _, secret in parts},
                   max_skew=max_skew)

    def sign(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """Headers that authenticate this request."""
        ts = str(int(time.time()))
        nonce = secrets.token_hex(12)
        sig = _digest(self._keys[self.primary], method, path, ts, nonce, body)
        return {KEY: self.primary, TS: ts, NONCE: nonce, SIG: sig}

    def check_headers(self, headers: Mapping[str, str]) -> None:
        """Raise :class:`AuthError` unless the signature headers are present,
        well-formed, fresh and under a known key (before the body is read)."""
        self._parse(headers, time.time())

    def _parse(self, headers: Mapping[str, str], now: float
               ) -> tuple[bytes, str, int, str, str]:
        key_id, ts, nonce, sig = (headers.get(KEY), headers.get(TS), headers.get(NONCE),
                                  headers.get(SIG))
        if not (key_id and ts and nonce and sig):
            raise AuthError("request is not signed")
        if not (key_id.isascii() and ts.isascii() and nonce.isascii() and sig.isascii()):
            raise AuthError("malformed signature headers")
        key = self._keys.get(key_id)
        if key is None:
            raise AuthError(f"unknown key id {key_id[:64]!r}")
        if not ts.isdigit() or len(ts) > 12:
            raise AuthError("malformed timestamp")
        stamp = int(ts)
        if abs(now - stamp) > self.max_skew:
            raise AuthError(f"timestamp is {now - stamp:+.0f}s off (max {self.max_skew:g}s)")
        if len(nonce) > 64 or len(sig) != 64:
            raise AuthError("malformed nonce or signature")
        return key, ts, stamp, nonce, sig

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Raise :class:`AuthError` unless the request is signed, fresh and
        new (:class:`ReplayStoreFull` if it cannot be remembered now)."""
        now = time.time()
        key, ts, stamp, nonce, sig = self._parse(headers, now)
        expected = _digest(key, method, path, ts, nonce, body)
        if not hmac.compare_digest(expected, sig):
            raise AuthError("bad signature")
        self._remember(nonce, stamp, now)

    def _remember(self, nonce: str, stamp: int, now: float) -> None:
        seen = self._seen
        if now - self._pruned >= 1.0:  # at most ~2 * max_skew + 1 timestamps held
            self._pruned = now
            for old in [s for s in seen if s < now - self.max_skew]:
                self._count -= len(seen.pop(old))  # a replay of these is stale now
        nonces = seen.get(stamp)
        if nonces is not None and nonce in nonces:
            raise AuthError("replayed nonce")
        if self._count >= MAX_NONCES:
            self.refused_full += 1
            raise ReplayStoreFull(f"replay store full ({MAX_NONCES:,} fresh nonces); "
                                  "try again shortly")
        if nonces is None:
            nonces = seen[stamp] = set()
        nonces.add(nonce)
        self._count += 1
