"""Vault secrets at rest: AES-256-GCM with the operator's key (``MOORAGE_SECRET_KEY``). Pure.

The key is 32 random bytes, base64 (standard or URL-safe alphabet, padding optional), e.g. from
``python -c "import base64, os; print(base64.b64encode(os.urandom(32)).decode())"``. Its *key id* is
the first 16 hex digits of the SHA-256 of the key: it is stored with every ciphertext, so a secret
sealed under another key is told apart from a tampered one, and keys can rotate later (decrypt with
the old, seal with the new) without guessing which key sealed what.

A sealed value is ``v1.<key id>.<base64url(nonce || ciphertext+tag)>``: a fresh 96-bit random nonce
per seal, and *associated data* naming the row it belongs to (tenant, vault and credential ids), so
a ciphertext copied into another row — another tenant's, say — does not open there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = "v1"
KEY_BYTES = 32
NONCE_BYTES = 12


class SecretKeyError(ValueError):
    """``MOORAGE_SECRET_KEY`` is not a base64 32-byte key."""


class SealedSecretError(Exception):
    """A sealed value that does not open: another key sealed it, or it was changed."""


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _b64decode(text: str) -> bytes:
    text = text.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        raise SecretKeyError("MOORAGE_SECRET_KEY is not base64") from None


class SecretBox:
    """Seals and opens vault secrets with one key (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise SecretKeyError(f"MOORAGE_SECRET_KEY must decode to {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._mac_key = hmac.new(key, b"moorage-mac-key", hashlib.sha256).digest()
        self.key_id = key_id(key)

    @classmethod
    def from_setting(cls, text: str) -> SecretBox | None:
        """The box for ``MOORAGE_SECRET_KEY``; None when it is empty. ``SecretKeyError`` if malformed."""
        if not text.strip():
            return None
        return cls(_b64decode(text))

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 of ``message`` under a key derived from this one (not the sealing key)."""
        return hmac.new(self._mac_key, message, hashlib.sha256).digest()

    def seal(self, plaintext: bytes, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        body = nonce + self._aead.encrypt(nonce, plaintext, context.encode())
        return f"{VERSION}.{self.key_id}.{base64.urlsafe_b64encode(body).decode().rstrip('=')}"

    def open(self, sealed: str, context: str) -> bytes:
        """The plaintext of ``sealed`` (made by ``seal`` with the same ``context``)."""
        version, _, rest = sealed.partition(".")
        kid, _, data = rest.partition(".")
        if version != VERSION or not data:
            raise SealedSecretError("not a sealed secret of this version")
        if kid != self.key_id:
            raise SealedSecretError(
                f"sealed with key {kid}, but MOORAGE_SECRET_KEY is key {self.key_id}: set the key it was sealed with"
            )
        try:
            body = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
            return self._aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], context.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedSecretError(
                "the sealed secret does not open: it was changed, or moved from another row"
            ) from None


def seal_context(tenant: str, vault_id: str, credential_id: str) -> str:
    """The associated data a credential's secrets are sealed with: the row they belong to."""
    return f"moorage-vault-credential/{tenant}/{vault_id}/{credential_id}"


def seal_secrets(box: SecretBox, secrets: dict[str, str], tenant: str, vault_id: str, credential_id: str) -> str:
    """A credential's secrets (a JSON object of strings), sealed for its row."""
    plain = json.dumps(secrets, separators=(",", ":")).encode()
    return box.seal(plain, seal_context(tenant, vault_id, credential_id))


def open_secrets(box: SecretBox, sealed: str, tenant: str, vault_id: str, credential_id: str) -> dict[str, str]:
    """What ``seal_secrets`` sealed (``SealedSecretError`` if it does not open here)."""
    secrets = json.loads(box.open(sealed, seal_context(tenant, vault_id, credential_id)))
    if not isinstance(secrets, dict):
        raise SealedSecretError("the sealed secret is not a credential's")
    return {str(k): str(v) for k, v in secrets.items()}
