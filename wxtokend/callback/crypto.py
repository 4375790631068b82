"""WeChat's message crypto for callbacks (Open Platform and WeCom third-party apps).

WeChat POSTs ``<xml>…<Encrypt>BASE64</Encrypt></xml>`` with ``timestamp``,
``nonce`` and ``msg_signature`` in the query. The signature is
``sha1(sorted([token, timestamp, nonce, encrypt]) joined)``. The key is
``base64(EncodingAESKey + "=")`` (32 bytes), the cipher AES-256-CBC with the
key's first 16 bytes as IV and PKCS#7 padding to 32-byte blocks, and the
plaintext ``16 random bytes + 4-byte big-endian length + message + receiver id``
(the component_appid, the suite_id or the corpid).

:class:`MessageCrypto` opens what WeChat sent (signature, freshness, padding,
length and receiver all checked, or :class:`BadCallback`) and seals messages
the same way (the emulator's pushes, and the tests).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
from typing import Final
from xml.etree.ElementTree import Element, SubElement, tostring

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree as SafeXML

from wxtokend.errors import BadCallback

__all__ = [
    "MAX_CLOCK_SKEW",
    "Forged",
    "MessageCrypto",
    "check_aes_key",
    "check_token",
    "xml_fields",
]

BLOCK: Final = 32  # WeChat pads to 32 bytes, not AES's 16
MAX_CLOCK_SKEW: Final = 300.0  # seconds a callback's timestamp may be off: older is a replay
_TOKEN = re.compile(r"[A-Za-z0-9]{3,32}")
_AES_KEY = re.compile(r"[A-Za-z0-9+/]{43}")
_MAX_MESSAGE: Final = 1 << 20


class Forged(BadCallback):
    """A callback that is not WeChat's to us: unsigned, stale, undecryptable, or for another."""


def check_token(token: str) -> str | None:
    """What is wrong with a message-crypto Token (3-32 letters and digits), or None."""
    return None if _TOKEN.fullmatch(token) else "must be 3 to 32 letters and digits"


def check_aes_key(key: str) -> str | None:
    """What is wrong with an EncodingAESKey (43 characters of base64), or None."""
    if not _AES_KEY.fullmatch(key):
        return "must be the 43-character EncodingAESKey from the platform's settings"
    return None


class MessageCrypto:
    """One receiver's callback crypto: its Token, EncodingAESKey and id."""

    __slots__ = ("_key", "_token", "receiver_id")

    def __init__(self, *, token: str, encoding_aes_key: str, receiver_id: str) -> None:
        for problem in (check_token(token), check_aes_key(encoding_aes_key)):
            if problem is not None:
                raise ValueError(problem)
        self._token = token
        self._key = base64.b64decode(encoding_aes_key + "=")
        self.receiver_id = receiver_id

    def __repr__(self) -> str:
        return f"MessageCrypto(receiver_id={self.receiver_id!r})"  # never the key

    def signature(self, timestamp: str, nonce: str, encrypt: str) -> str:
        joined = "".join(sorted([self._token, timestamp, nonce, encrypt]))
        return hashlib.sha1(joined.encode(), usedforsecurity=False).hexdigest()

    # -- opening what WeChat sent ------------------------------------------

    def open(
        self,
        body: bytes,
        *,
        msg_signature: str,
        timestamp: str,
        nonce: str,
        now: float,
        max_skew: float = MAX_CLOCK_SKEW,
    ) -> bytes:
        """The message XML inside a callback body, once every check passed."""
        if not timestamp.isdigit() or abs(now - int(timestamp)) > max_skew:
            raise Forged("timestamp missing or too far from now (a replay?)")
        encrypt = xml_fields(body).get("Encrypt")
        if not encrypt:
            raise BadCallback("body has no Encrypt element")
        expected = self.signature(timestamp, nonce, encrypt)
        if not hmac.compare_digest(expected.encode(), msg_signature.encode()):
            raise Forged("msg_signature does not match (wrong Token, or not from WeChat)")
        return self.decrypt(encrypt)

    def decrypt(self, encrypt: str) -> bytes:
        """The message inside ``encrypt``; its receiver id must be ours."""
        try:
            sealed = base64.b64decode(encrypt, validate=True)
        except (binascii.Error, ValueError):
            raise BadCallback("Encrypt is not base64") from None
        if not sealed or len(sealed) % BLOCK:
            raise BadCallback("Encrypt is not a whole number of blocks")
        decryptor = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).decryptor()
        plain = decryptor.update(sealed) + decryptor.finalize()
        pad = plain[-1]
        if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
            raise Forged("bad padding (wrong EncodingAESKey?)")
        plain = plain[:-pad]
        if len(plain) < 20:
            raise BadCallback("message too short")
        (length,) = struct.unpack(">I", plain[16:20])
        message, receiver = plain[20 : 20 + length], plain[20 + length :]
        if len(message) != length:
            raise BadCallback("message length prefix is wrong")
        if not hmac.compare_digest(receiver, self.receiver_id.encode()):
            raise Forged("message is for another receiver id, not ours")
        return message

    # -- sealing (the emulator's pushes, and tests) ------------------------

    def encrypt(self, message: bytes, *, random16: bytes | None = None) -> str:
        if len(message) > _MAX_MESSAGE:
            raise ValueError("message too long")
        prefix = random16 if random16 is not None else os.urandom(16)
        plain = prefix + struct.pack(">I", len(message)) + message + self.receiver_id.encode()
        pad = BLOCK - len(plain) % BLOCK
        plain += bytes([pad]) * pad
        encryptor = Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16])).encryptor()
        return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()

    def seal(self, message: bytes, *, timestamp: str, nonce: str) -> tuple[bytes, str]:
        """A callback body for ``message`` and its msg_signature, as WeChat sends them."""
        encrypt = self.encrypt(message)
        root = Element("xml")
        SubElement(root, "AppId").text = self.receiver_id
        SubElement(root, "ToUserName").text = self.receiver_id
        SubElement(root, "Encrypt").text = encrypt
        return tostring(root), self.signature(timestamp, nonce, encrypt)


def xml_fields(body: bytes) -> dict[str, str]:
    """The text of each child of a flat ``<xml>`` document (no DTDs, no entities)."""
    try:
        root = SafeXML.fromstring(body, forbid_dtd=True)
    except Exception:  # defusedxml's refusals and expat's parse errors alike
        raise BadCallback("body is not well-formed XML without a DTD") from None
    if root.tag != "xml":
        raise BadCallback("body's root element is not <xml>")
    return {child.tag: (child.text or "").strip() for child in root}
