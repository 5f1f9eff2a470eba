"""HMAC-SHA256 request signing between peers, with key rotation and replay defence.

A signed request carries four headers::

    X-Gobucket-Key        key id (two keys may be active during a rotation)
    X-Gobucket-Timestamp  unix seconds, refused when more than max_skew away
    X-Gobucket-Nonce      random, refused when seen before within the skew window
    X-Gobucket-Signature  hex HMAC-SHA256 over "METHOD\\nPATH\\nTS\\nNONCE\\nsha256(body)"

A keyring is written ``"secret"`` or ``"id1=secret1,id2=secret2"``; the first
key signs, every key verifies. Rotate by deploying ``new=...,old=...`` to every
node, then dropping ``old``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping

__all__ = ["AuthError", "Keyring"]

KEY, TS, NONCE, SIG = ("X-Gobucket-Key", "X-Gobucket-Timestamp", "X-Gobucket-Nonce",
                       "X-Gobucket-Signature")

#: Replay cache bound: nonces older than the skew window are pruned first; a
#: flood beyond this evicts the oldest (their timestamps are refused anyway
#: once they are older than the window).
MAX_NONCES = 200_000


class AuthError(Exception):
    """A request is unsigned, badly signed, stale or replayed (HTTP 401)."""


def _digest(key: bytes, method: str, path: str, ts: str, nonce: str, body: bytes) -> str:
    body_hash = hashlib.sha256(body).hexdigest()
    text = f"{method}\n{path}\n{ts}\n{nonce}\n{body_hash}".encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


class Keyring:
    """Shared secrets: the first signs, all verify. See the module docstring."""

    def __init__(self, keys: Mapping[str, str], *, max_skew: float = 30.0) -> None:
        if not keys:
            raise ValueError("secret must hold at least one key")
        for key_id, secret in keys.items():
            if not key_id or not isinstance(key_id, str) or "," in key_id or "=" in key_id:
                raise ValueError(f"secret key id {key_id!r} is invalid")
            if not isinstance(secret, str) or len(secret) < 8:
                raise ValueError(f"secret for key {key_id!r} must be a string of >= 8 characters")
        self._keys = {k: v.encode() for k, v in keys.items()}
        self.primary = next(iter(keys))
        self.max_skew = max_skew
        self._nonces: OrderedDict[str, float] = OrderedDict()

    @classmethod
    def parse(cls, spec: str, *, max_skew: float = 30.0) -> Keyring:
        """``"secret"`` or ``"id1=secret1,id2=secret2"`` (first one signs)."""
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError("secret must be a non-empty string")
        if "=" not in spec:
            return cls({"k0": spec.strip()}, max_skew=max_skew)
        keys: dict[str, str] = {}
        for part in spec.split(","):
            key_id, sep, secret = part.strip().partition("=")
            if not sep:
                raise ValueError(f"secret entry {part!r} must be id=secret")
            keys[key_id.strip()] = secret.strip()
        return cls(keys, max_skew=max_skew)

    def sign(self, method: str, path: str, body: bytes) -> dict[str, str]:
        """Headers that authenticate this request."""
        ts = str(int(time.time()))
        nonce = secrets.token_hex(12)
        sig = _digest(self._keys[self.primary], method, path, ts, nonce, body)
        return {KEY: self.primary, TS: ts, NONCE: nonce, SIG: sig}

    def verify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Raise :class:`AuthError` unless the request is signed, fresh and new."""
        key_id, ts, nonce, sig = (headers.get(KEY), headers.get(TS), headers.get(NONCE),
                                  headers.get(SIG))
        if not (key_id and ts and nonce and sig):
            raise AuthError("request is not signed")
        if not (key_id.isascii() and ts.isascii() and nonce.isascii() and sig.isascii()):
            raise AuthError("malformed signature headers")
        key = self._keys.get(key_id)
        if key is None:
            raise AuthError(f"unknown key id {key_id[:64]!r}")
        try:
            stamp = int(ts)
        except ValueError:
            raise AuthError("malformed timestamp") from None
        now = time.time()
        if abs(now - stamp) > self.max_skew:
            raise AuthError(f"timestamp is {now - stamp:+.0f}s off (max {self.max_skew:g}s)")
        if len(nonce) > 64 or len(sig) != 64:
            raise AuthError("malformed nonce or signature")
        expected = _digest(key, method, path, ts, nonce, body)
        if not hmac.compare_digest(expected, sig):
            raise AuthError("bad signature")
        self._remember(nonce, now)

    def _remember(self, nonce: str, now: float) -> None:
        nonces = self._nonces
        if nonce in nonces:
            raise AuthError("replayed nonce")
        nonces[nonce] = now
        horizon = now - 2 * self.max_skew
        while nonces:
            _, seen = next(iter(nonces.items()))
            if seen >= horizon and len(nonces) <= MAX_NONCES:
                break
            nonces.popitem(last=False)
