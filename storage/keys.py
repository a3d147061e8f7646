"""Storage: API keys — created, listed, revoked, and read by the receivers (collector/auth.py caches them).

A key made here is ``csk_<id>_<secret>``: ``id`` is 12 hex characters, public (``callscope keys list`` shows it,
logs may name it); ``secret`` is 32 random bytes, base64url. Only the SHA-256 digest of the whole key is stored.
A fast digest is the right one for such keys: nobody can search a 256-bit random space, so a slow password
hash (bcrypt, argon2) would protect nothing and cost CPU on every cache miss. An operator may also register a
key of their own (``--key-from-env``, e.g. from a compose ``.env``); its id is then derived from its digest,
and it must be long enough not to be guessed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["ApiKey", "KeyProblem", "KEY_PREFIX", "MIN_OPERATOR_KEY_LENGTH", "new_key", "key_id", "key_digest",
           "create_key", "list_keys", "revoke_key", "load_keys", "touch_keys", "tenant_exists"]

KEY_PREFIX = "csk_"
MIN_OPERATOR_KEY_LENGTH = 24
_GENERATED = re.compile(r"^csk_([0-9a-f]{12})_")   # a cut or mistyped key still names its id in errors
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")   # what fits an HTTP header / gRPC metadata value unquoted


class KeyProblem(ValueError):
    """A key command cannot do what was asked (unknown tenant, unknown id, a weak or revoked key)."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str
    label: str | None
    created_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


def new_key() -> str:
    """A fresh random key (``csk_`` + 12 hex id + ``_`` + 43 characters of secret)."""
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"{KEY_PREFIX}{secrets.token_hex(6)}_{secret}"


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def key_id(key: str) -> str:
    """The public id of a key: the one it embeds, or (an operator's own key) the start of its digest."""
    match = _GENERATED.match(key)
    return match.group(1) if match else "op-" + key_digest(key).hex()[:12]


def _row(row: asyncpg.Record) -> ApiKey:
    return ApiKey(id=row["id"], tenant=row["tenant"], label=row["label"], created_at=row["created_at"],
                  revoked_at=row["revoked_at"], last_used_at=row["last_used_at"])


async def tenant_exists(connection: asyncpg.Connection, tenant: str) -> bool:
    return bool(await connection.fetchval("SELECT EXISTS (SELECT 1 FROM tenants WHERE name = $1)", tenant))


async def create_key(connection: asyncpg.Connection, tenant: str, label: str | None = None,
                     key: str | None = None) -> tuple[ApiKey, str, bool]:
    """Store a new key for ``tenant``: (the key's row, the key itself, whether it was created now).

    ``key`` registers an operator's own key instead of generating one; registering it again is a no-op
    (``created`` False), so a deployment can run the same command on every start.
    """
    if not await tenant_exists(connection, tenant):
        known = [r["name"] for r in await connection.fetch("SELECT name FROM tenants ORDER BY name LIMIT 20")]
        raise KeyProblem(f"unknown tenant {tenant!r} (tenants: {', '.join(known)}); "
                         f"create it first with `callscope tenants create {tenant}`")
    if key is None:
        key = new_key()
    elif len(key) < MIN_OPERATOR_KEY_LENGTH or not _PRINTABLE.match(key):
        raise KeyProblem(f"a key must be at least {MIN_OPERATOR_KEY_LENGTH} printable characters without "
                         f"spaces (e.g. `openssl rand -hex 32`), got {len(key)} characters")
    digest = key_digest(key)
    async with connection.transaction():
        existing = await connection.fetchrow("SELECT * FROM api_keys WHERE key_hash = $1", digest)
        if existing is not None:
            found = _row(existing)
            if found.revoked_at is not None:
                raise KeyProblem(f"this key ({found.id}) was revoked at {found.revoked_at:%Y-%m-%d %H:%M:%S %Z}; "
                                 f"a revoked key is never accepted again: use a new one")
            if found.tenant != tenant:
                raise KeyProblem(f"this key ({found.id}) is registered for tenant {found.tenant!r}, not {tenant!r}")
            return found, key, False
        row = await connection.fetchrow(
            "INSERT INTO api_keys (id, tenant, label, key_hash) VALUES ($1, $2, $3, $4) RETURNING *",
            key_id(key), tenant, label, digest)
    return _row(row), key, True


async def list_keys(connection: asyncpg.Connection) -> list[ApiKey]:
    return [_row(r) for r in await connection.fetch("SELECT * FROM api_keys ORDER BY tenant, created_at, id")]


async def revoke_key(connection: asyncpg.Connection, id: str) -> ApiKey:
    """Revoke key ``id`` (revoking it again keeps the first revocation time)."""
    row = await connection.fetchrow(
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 RETURNING *", id)
    if row is None:
        raise KeyProblem(f"no API key with id {id!r} (see `callscope keys list`)")
    return _row(row)


async def load_keys(connection: asyncpg.Connection) -> list[tuple[str, bytes, str, datetime | None]]:
    """(id, digest, tenant, revoked_at) of every key: what the receivers' cache holds."""
    rows = await connection.fetch("SELECT id, key_hash, tenant, revoked_at FROM api_keys")
    return [(r["id"], bytes(r["key_hash"]), r["tenant"], r["revoked_at"]) for r in rows]


async def touch_keys(connection: asyncpg.Connection, ids: list[str]) -> None:
    """Mark keys as used now (receivers batch this every refresh, never per request)."""
    if ids:
        await connection.execute("UPDATE api_keys SET last_used_at = now() WHERE id = ANY($1::text[])", ids)
