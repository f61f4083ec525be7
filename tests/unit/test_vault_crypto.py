"""Vault secrets at rest (moorage.vault_crypto): AES-256-GCM sealing with the operator's key, bound
to the row it belongs to, with the key's id stored alongside."""

from __future__ import annotations

import base64
import os

import pytest
from moorage.vault_crypto import SealedSecretError, SecretBox, SecretKeyError, key_id, open_secrets, seal_secrets

KEY = os.urandom(32)


def test_a_sealed_secret_opens_only_for_its_row_and_hides_its_plaintext() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(b"tok-123456789", "tenant/vlt_1/vcrd_1")
    assert sealed.startswith(f"v1.{key_id(KEY)}.") and b"tok-123456789" not in sealed.encode()
    assert box.open(sealed, "tenant/vlt_1/vcrd_1") == b"tok-123456789"
    assert box.seal(b"tok-123456789", "tenant/vlt_1/vcrd_1") != sealed  # a fresh nonce each time
    with pytest.raises(SealedSecretError, match="moved from another row"):
        box.open(sealed, "other-tenant/vlt_1/vcrd_1")


def test_a_changed_or_foreign_ciphertext_does_not_open() -> None:
    box = SecretBox(KEY)
    sealed = box.seal(b"secret", "ctx")
    head, _, body = sealed.rpartition(".")
    flipped = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1]
    with pytest.raises(SealedSecretError):
        box.open(f"{head}.{flipped}", "ctx")
    other = SecretBox(os.urandom(32))
    with pytest.raises(SealedSecretError, match=f"sealed with key {key_id(KEY)}"):
        other.open(sealed, "ctx")
    with pytest.raises(SealedSecretError):
        box.open("v0.x.y", "ctx")


def test_the_key_setting_takes_base64_of_32_bytes_in_either_alphabet() -> None:
    assert SecretBox.from_setting("") is None and SecretBox.from_setting("  ") is None
    standard = base64.b64encode(KEY).decode()
    urlsafe = base64.urlsafe_b64encode(KEY).decode().rstrip("=")
    for text in (standard, urlsafe, f" {standard}\n"):
        box = SecretBox.from_setting(text)
        assert box is not None and box.key_id == key_id(KEY)
    with pytest.raises(SecretKeyError, match="32 bytes"):
        SecretBox.from_setting(base64.b64encode(os.urandom(16)).decode())
    with pytest.raises(SecretKeyError, match="base64"):
        SecretBox.from_setting("not base64 at all!")


def test_credential_secrets_round_trip_as_one_sealed_document() -> None:
    box = SecretBox(KEY)
    sealed = seal_secrets(box, {"access_token": "a", "refresh_token": "r"}, "acme", "vlt_1", "vcrd_1")
    assert open_secrets(box, sealed, "acme", "vlt_1", "vcrd_1") == {"access_token": "a", "refresh_token": "r"}
    with pytest.raises(SealedSecretError):
        open_secrets(box, sealed, "acme", "vlt_1", "vcrd_2")
