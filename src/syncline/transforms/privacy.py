"""``mask`` and ``encrypt``: keep personal data out of the target, or readable only with a key.

Encrypted values look like ``enc:v1:<base64(nonce ‖ ciphertext ‖ tag)>``:
AES-256-GCM with a random 96-bit nonce per value, over the value's JSON text, with
``<table id>\\0<column>`` as associated data, so a ciphertext copied into another
column or table fails to decrypt. ``decrypt_value`` is the consumer side.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from pydantic import Field, field_validator, model_validator

from syncline.events import Change, Row
from syncline.schema import Column, TableSchema
from syncline.transforms.base import Result, SpecBase, Transform, field_names, replace, with_columns

PREFIX = "enc:v1:"
_NONCE = 12
_json = msgspec.json.Encoder()
_TEXT = {"postgres": "text", "sqlite": "TEXT"}


def _text(v: Any) -> str:
    return v if type(v) is str else _json.encode(v).decode()


class _RowMap(Transform):
    """Replaces the values of some columns in ``before``/``after`` (and ``key`` if safe)."""

    key_safe = False  # deterministic and unique-preserving, so key columns may be mapped

    def __init__(self, index: int, tables: list[str] | None, fields: list[str]) -> None:
        super().__init__(index, tables)
        self._fields = tuple(fields)

    def value(self, change: Change, column: str, v: Any) -> Any:
        raise NotImplementedError

    def _map(self, change: Change, row: Row) -> Row:
        out: Row | None = None
        for name in self._fields:
            v = row.get(name)
            if v is not None:
                if out is None:
                    out = dict(row)
                out[name] = self.value(change, name, v)
        return row if out is None else out

    def apply(self, change: Change) -> Result:
        ev = change.event
        new: dict[str, Any] = {}
        if ev.before and (b := self._map(change, ev.before)) is not ev.before:
            new["before"] = b
        if ev.after and (a := self._map(change, ev.after)) is not ev.after:
            new["after"] = a
        key = change.key
        if self.key_safe and key:
            key = self._map(change, key)
        if not new and key is change.key:
            return change
        return replace(change, key, **new)

    def column_type(self, column: Column, dialect: str) -> Column:
        return Column(column.name, _TEXT.get(dialect, "text"), column.nullable)

    def schema(self, table: TableSchema) -> TableSchema | None:
        self.require(table, self._fields, "fields")
        if not self.key_safe:
            keys = [f for f in self._fields if f in table.key]
            if keys:
                raise self.schema_error(
                    table,
                    f"cannot {self.kind} key column(s) {', '.join(keys)}: the target "
                    "applies rows by key (mask them with method: hash instead)",
                )
        names = set(self._fields)
        cols = [self.column_type(c, table.dialect) if c.name in names else c for c in table.columns]
        return with_columns(table, cols)


# ---- mask ------------------------------------------------------------------------------


class Mask(_RowMap):
    kind = "mask"

    def __init__(
        self,
        index: int,
        tables: list[str] | None,
        fields: list[str],
        method: str,
        salt: bytes | None,
        keep_last: int,
        mask_char: str,
        replacement: Any,
    ) -> None:
        super().__init__(index, tables, fields)
        self.key_safe = method == "hash"
        self._method = method
        self._replacement = replacement
        self._fn: Callable[[Any], Any]
        if method == "hash":
            if salt is None:
                self._fn = lambda v: hashlib.sha256(_text(v).encode()).hexdigest()
            else:
                mac = hmac.new(salt, digestmod=hashlib.sha256)

                def keyed(v: Any) -> str:
                    m = mac.copy()
                    m.update(_text(v).encode())
                    return m.hexdigest()

                self._fn = keyed
        elif method == "partial":

            def partial(v: Any) -> str:
                s = _text(v)
                hidden = len(s) - keep_last if len(s) > keep_last else len(s)
                return mask_char * hidden + s[hidden:]

            self._fn = partial
        else:
            self._fn = lambda v: replacement

    def value(self, change: Change, column: str, v: Any) -> Any:
        return self._fn(v)

    def column_type(self, column: Column, dialect: str) -> Column:
        if self._method != "redact":
            return super().column_type(column, dialect)
        if isinstance(self._replacement, str):
            return Column(column.name, _TEXT.get(dialect, "text"), True)
        return Column(column.name, column.type, True)


class MaskSpec(SpecBase):
    """``{type: mask, fields: [email], method: hash|redact|partial, ...}``."""

    type: Literal["mask"]
    fields: list[str]
    method: Literal["hash", "redact", "partial"]
    salt_env: str | None = None  # hash: HMAC-SHA256 keyed with this variable's value
    keep_last: int = Field(default=4, ge=0, le=1000)  # partial
    mask_char: str = Field(default="*", min_length=1, max_length=1)  # partial
    replacement: Any = None  # redact

    @field_validator("fields")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one column to mask")
        field_names(v)
        return v

    @field_validator("salt_env")
    @classmethod
    def _salt_set(cls, v: str | None) -> str | None:
        if v is not None and not os.environ.get(v):
            raise ValueError(f"environment variable {v} is not set (it holds the hash salt)")
        return v

    @model_validator(mode="after")
    def _options_fit(self) -> MaskSpec:
        fits = {
            "salt_env": "hash",
            "keep_last": "partial",
            "mask_char": "partial",
            "replacement": "redact",
        }
        for opt, method in fits.items():
            if opt in self.model_fields_set and self.method != method:
                raise ValueError(f"{opt} only applies to method {method}, not {self.method}")
        return self

    def build(self, index: int) -> Transform:
        salt = os.environ[self.salt_env].encode() if self.salt_env else None
        return Mask(
            index,
            self.tables,
            list(self.fields),
            self.method,
            salt,
            self.keep_last,
            self.mask_char,
            self.replacement,
        )


# ---- encrypt ---------------------------------------------------------------------------


def _aad(table_id: str, column: str) -> bytes:
    return f"{table_id}\0{column}".encode()


def load_key(env: str) -> bytes:
    """The 32-byte key from ``env`` (base64); ValueError naming the variable if unusable."""
    raw = os.environ.get(env)
    hint = "set it to the base64 of 32 random bytes, e.g. `openssl rand -base64 32`"
    if not raw:
        raise ValueError(f"environment variable {env} is not set; {hint}")
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"environment variable {env} is not valid base64; {hint}") from None
    if len(key) != 32:
        raise ValueError(
            f"environment variable {env} decodes to {len(key)} bytes, AES-256 needs 32; {hint}"
        )
    return key


class Encrypt(_RowMap):
    kind = "encrypt"

    def __init__(self, index: int, tables: list[str] | None, fields: list[str], key: bytes):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        super().__init__(index, tables, fields)
        self._encrypt = AESGCM(key).encrypt

    def value(self, change: Change, column: str, v: Any) -> Any:
        nonce = os.urandom(_NONCE)
        sealed = self._encrypt(nonce, _json.encode(v), _aad(change.event.table_id, column))
        return PREFIX + base64.b64encode(nonce + sealed).decode()


def decrypt_value(key: bytes, table_id: str, column: str, value: Any) -> Any:
    """The original value of an ``encrypt``ed column (None stays None).

    ``table_id`` and ``column`` are the names the value had where the encrypt
    transform ran. Raises ``ValueError`` for a wrong key, table or column, or an
    altered value.
    """
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith(PREFIX):
        raise ValueError(f"not an encrypted value (expected the {PREFIX} prefix)")
    try:
        blob = base64.b64decode(value[len(PREFIX) :], validate=True)
        plain = AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], _aad(table_id, column))
    except (binascii.Error, ValueError, InvalidTag):
        raise ValueError(
            f"cannot decrypt {table_id}.{column}: wrong key, table or column, or an altered value"
        ) from None
    return msgspec.json.decode(plain)


class EncryptSpec(SpecBase):
    """``{type: encrypt, fields: [card_number], key_env: SYNCLINE_FIELD_KEY}``."""

    type: Literal["encrypt"]
    fields: list[str]
    key_env: str = "SYNCLINE_FIELD_KEY"

    @field_validator("fields")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one column to encrypt")
        field_names(v)
        return v

    @field_validator("key_env")
    @classmethod
    def _key_usable(cls, v: str) -> str:
        load_key(v)
        return v

    def build(self, index: int) -> Transform:
        return Encrypt(index, self.tables, list(self.fields), load_key(self.key_env))
