"""Storage: tenants and the login roles that read as them (``callscope tenants create | list``).

A tenant is a row of ``tenants`` (``default`` always exists). Its reader is a PostgreSQL login role,
``callscope_t_<name>``, member of the reader group ``callscope_reader`` (so it has the group's SELECT grants) with
the group's role settings copied (PostgreSQL applies ``ALTER ROLE … SET`` of the login role only, never of its
groups) and the group's connection limit. ``tenant_readers`` maps the role to the tenant; row-level security
(migration 0013) then shows that role its tenant's rows only, through ``callscope_current_tenant()``, which reads
``session_user`` — what the role logged in as, which ``SET ROLE`` and settings do not change. The plain
``callscope_reader`` reads as ``default``.

Roles are cluster-wide: a second database on the same server reuses the role (its password is set anew) and maps
it in its own ``tenant_readers``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["Tenant", "TenantProblem", "READER_GROUP", "ROLE_PREFIX", "role_for", "new_password", "create_tenant",
           "list_tenants"]

READER_GROUP = "callscope_reader"
ROLE_PREFIX = "callscope_t_"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")   # the tenants_name_format check of migration 0009
_SETTING = re.compile(r"^([A-Za-z_][A-Za-z0-9_.]*)=(.*)$", re.DOTALL)


class TenantProblem(ValueError):
    """A tenant command cannot do what was asked (a bad name, a name too long for a role)."""


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    created_at: datetime
    retention_days: int | None
    roles: tuple[str, ...]
    active_keys: int


def role_for(tenant: str) -> str:
    """The login role of ``tenant`` (PostgreSQL names are at most 63 bytes)."""
    if not _NAME.match(tenant):
        raise TenantProblem(f"tenant names are lower-case letters, digits, '_' and '-' (at most 63, starting with a "
                            f"letter or digit), got {tenant!r}")
    role = ROLE_PREFIX + tenant
    if len(role) > 63:
        raise TenantProblem(f"tenant name {tenant!r} is too long for its role {role!r} (63 characters at most): "
                            f"use at most {63 - len(ROLE_PREFIX)} characters")
    return role


def new_password() -> str:
    return secrets.token_urlsafe(24)


async def _copy_group_settings(connection: asyncpg.Connection, role: str) -> None:
    """The reader group's role settings (read-only transactions, statement timeout, …) and connection limit."""
    rows = await connection.fetch(
        "SELECT s.setdatabase <> 0 AS this_database, unnest(s.setconfig) AS setting FROM pg_db_role_setting s "
        "WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = $1) "
        "AND s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))", READER_GROUP)
    for row in rows:
        match = _SETTING.match(row["setting"])
        if match is None:
            continue
        name, value = match.groups()
        where = " IN DATABASE " + await connection.fetchval("SELECT quote_ident(current_database())") \
            if row["this_database"] else ""
        await connection.execute(await connection.fetchval(
            f"SELECT format('ALTER ROLE %I{where} SET %s = %L', $1::text, $2::text, $3::text)", role, name, value))
    limit = await connection.fetchval("SELECT rolconnlimit FROM pg_roles WHERE rolname = $1", READER_GROUP)
    if limit is not None:
        await connection.execute(await connection.fetchval(
            "SELECT format('ALTER ROLE %I CONNECTION LIMIT %s', $1::text, $2::int)", role, limit))


async def create_tenant(connection: asyncpg.Connection, name: str, password: str, *,
                        retention_days: int | None = None) -> tuple[Tenant, str, bool]:
    """Create ``name`` (or complete it: idempotent), its login role with ``password`` and its reader mapping.

    Return (the tenant, its role, whether the tenant row is new). ``retention_days`` given: the tenant's retention
    (storage/retention.py deletes its rows older than that); None keeps what it has (NULL for a new tenant: the
    collector's ``retention_days``). Needs a role that may create roles (the collector's owner role in compose)."""
    role = role_for(name)
    if retention_days is not None and retention_days < 0:
        raise TenantProblem("--retention-days must be ≥ 0 (0: keep everything)")
    group = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", READER_GROUP)
    if group is None:
        raise TenantProblem(f"the reader group {READER_GROUP} does not exist: run `callscope migrate` first")
    async with connection.transaction():
        created = await connection.fetchval(
            "INSERT INTO tenants (name, retention_days) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE "
            "SET retention_days = coalesce(EXCLUDED.retention_days, tenants.retention_days) RETURNING xmax = 0",
            name, retention_days)
        exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
        statement = ("SELECT format('ALTER ROLE %I LOGIN INHERIT PASSWORD %L', $1::text, $2::text)" if exists else
                     "SELECT format('CREATE ROLE %I LOGIN INHERIT PASSWORD %L', $1::text, $2::text)")
        await connection.execute(await connection.fetchval(statement, role, password))
        # the reader group's privileges (SELECT on the public tables and views), nothing of its own
        await connection.execute(await connection.fetchval(
            "SELECT format('GRANT %I TO %I', $1::text, $2::text)", READER_GROUP, role))
        await _copy_group_settings(connection, role)
        await connection.execute(
            "INSERT INTO tenant_readers (role_name, tenant) VALUES ($1, $2) "
            "ON CONFLICT (role_name) DO UPDATE SET tenant = EXCLUDED.tenant", role, name)
    tenant = next(t for t in await list_tenants(connection) if t.name == name)
    return tenant, role, bool(created)


async def list_tenants(connection: asyncpg.Connection) -> list[Tenant]:
    rows = await connection.fetch(
        "SELECT t.name, t.created_at, t.retention_days, "
        "       ARRAY(SELECT r.role_name FROM tenant_readers r WHERE r.tenant = t.name ORDER BY 1) AS roles, "
        "       (SELECT count(*) FROM api_keys k WHERE k.tenant = t.name AND k.revoked_at IS NULL) AS active_keys "
        "FROM tenants t ORDER BY t.name")
    return [Tenant(name=r["name"], created_at=r["created_at"], retention_days=r["retention_days"],
                   roles=tuple(r["roles"]), active_keys=int(r["active_keys"])) for r in rows]
