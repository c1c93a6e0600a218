"""De-identified ids: one rule for diagnose, inspect and the app.

An id (study, patient, file) is shown as the first 16 hex digits of its SHA-256. A plain hash of
a short id (a medical record number, an accession number) can be reversed by hashing every
candidate, so a site that shares outputs sets a secret key in the environment variable
``I2M2_ID_SALT``: ids are then the first 16 hex digits of HMAC-SHA256(key, id), which no one
without the key can link back. The same key gives the same ids (``diagnose --resume``, the app
matching a batch run's ids to its studies); the key itself is never written anywhere.
"""

from __future__ import annotations

import hashlib
import hmac
import os

ID_SALT_ENV = "I2M2_ID_SALT"
HASH_HEX = 16


def id_salt() -> bytes | None:
    """The key from ``I2M2_ID_SALT`` (UTF-8), or None when unset or empty."""
    value = os.environ.get(ID_SALT_ENV, "")
    return value.encode("utf-8") if value else None


def hash_id(text: str) -> str:
    """The de-identified form of ``text``: 16 hex digits of HMAC-SHA256(key, text) with the key of
    ``I2M2_ID_SALT``, of SHA-256(text) without one."""
    key = id_salt()
    data = str(text).encode("utf-8")
    digest = hmac.new(key, data, hashlib.sha256).hexdigest() if key else hashlib.sha256(data).hexdigest()
    return digest[:HASH_HEX]
