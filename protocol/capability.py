"""Capabilities: the tokens that stand in for a dma-buf file descriptor.

A dma-buf fd is a capability: only a process that was handed it can attach. Here the run's secret
(generated per run by the shell or by `dmabuf-emu`, never inside the protocol) keys three kinds of
token, each HMAC-SHA256 of a fixed label, truncated to 128 bits, as lowercase hex:

    join token        HMAC(secret, "join:<importer name>")        hello: may join under this name
    export token      HMAC(secret, "export:<buffer>")             attach: may attach this buffer
    attachment token  HMAC(secret, "att:<attachment>:<peer hex>")  map, unmap, pin, unpin, detach

The exporter derives join and export tokens on demand; an attachment's token it derives once, at
attach, and keeps beside the attachment (a compare per map instead of an HMAC). Every check is
hmac.compare_digest.
`dmabuf-emu` hands each importer its join token and the export tokens of the buffers the scenario
grants it. An attachment token is bound to the connection identity (the ZeroMQ routing id) the
attach came on, so it is worth nothing on another connection, and to the attachment id, which is
never reused, so it is worth nothing once its attachment is gone.

Deterministic and pure: no clock, no randomness (the secret comes in from outside).
"""

from __future__ import annotations

import functools
import hashlib
import hmac

TOKEN_HEX = 32          # 128 bits
MIN_SECRET = 16         # bytes


@functools.lru_cache(maxsize=4096)   # pure: the simulator derives the same tokens at every schedule's start-up
def _mac(secret: bytes, label: str) -> str:
    return hmac.new(secret, label.encode(), hashlib.sha256).hexdigest()[:TOKEN_HEX]


def join_token(secret: bytes, name: str) -> str:
    return _mac(secret, f"join:{name}")


def export_token(secret: bytes, buffer: int) -> str:
    return _mac(secret, f"export:{buffer}")


def attachment_token(secret: bytes, attachment: int, peer: bytes) -> str:
    return _mac(secret, f"att:{attachment}:{peer.hex()}")


def matches(presented: str, expected: str) -> bool:
    """Constant-time comparison; a token of the wrong length or alphabet simply does not match."""
    return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode())
