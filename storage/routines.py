"""Storage: the names and versions of the server-side routines (write, derive, rollup refresh).

The routines a collector calls are code, not schema, and two releases of the collector run side by side during
a rolling upgrade. So each routine carries its version in its name (``callscope_write_staged_v1``), every
release calls its own version, and ``callscope migrate`` installs this release's version next to the previous
one (storage/migrate.py): a collector of the previous release keeps calling the routines it was written for
while the new ones roll out, and nothing replaces another release's code. Versions older than the previous one
are dropped. Version 0 is the release before routines were versioned: its routines have the bare names.

Bump ``ROUTINE_VERSION`` whenever the SQL of a versioned routine changes (tests/test_scaleout.py compares a
fingerprint of that SQL with ``ROUTINE_FINGERPRINT`` and says so): otherwise migrate would replace the code of
collectors still running the same version. Each release calls only its own version, so arguments and results
may change from one version to the next; the tables both versions read and write may not (a schema change that
breaks the previous release's routines is done in two releases: expand, then contract).

Functions that dashboards and users call (``callscope_hist_*``, ``callscope_array_cat``, ``callscope_call_spans``)
are a read API with stable names: they are not versioned and change only compatibly.
"""

from __future__ import annotations

import re

__all__ = ["ROUTINE_VERSION", "ROUTINE_FINGERPRINT", "VERSIONED_ROUTINES", "STABLE_ROUTINES", "routine_name",
           "versioned_sql"]

#: The version of the routines this release installs and calls.
ROUTINE_VERSION = 2
#: sha256 (first 16 hex digits) of this version's routine SQL; tests/test_scaleout.py keeps the two in step.
ROUTINE_FINGERPRINT = "6d0364af2196af41"

#: Routines called by the collector (and by each other): renamed ``<name>_v<version>`` when installed.
VERSIONED_ROUTINES = (
    "callscope_write_staged",
    "callscope_derive",
    "callscope_refresh_turn_rollup",
    "callscope_refresh_call_rollup",
    "callscope_refresh_stage_rollup",
    "callscope_refresh_event_rollup",
    # the derive routine's casts: its results must not change under a running collector
    "callscope_float",
    "callscope_int",
    "callscope_int4",
    "callscope_bool",
    "callscope_us_ts",
)
#: The read API installed by the same code (storage/rollup.py), under stable names.
STABLE_ROUTINES = (
    "callscope_array_cat",
    "callscope_hist_bin",
    "callscope_hist_mid",
    "callscope_hist_quantiles_sorted",
    "callscope_hist_quantiles",
    "callscope_hist_quantile",
    # the dashboards call it for the partial minutes at the ends of a range
    "callscope_event_seen_before",
)

_NAMES = re.compile(r"\b(" + "|".join(sorted(VERSIONED_ROUTINES, key=len, reverse=True)) + r")\b")


def routine_name(name: str, version: int | None = None) -> str:
    """``callscope_derive`` → ``callscope_derive_v1`` (default: this release's version; 0: the bare name)."""
    if name not in VERSIONED_ROUTINES:
        raise ValueError(f"{name} is not a versioned routine")
    version = ROUTINE_VERSION if version is None else version
    return name if version == 0 else f"{name}_v{version}"


def versioned_sql(sql: str, version: int | None = None) -> str:
    """``sql`` with every versioned routine's name (definitions and calls alike) given ``version``."""
    version = ROUTINE_VERSION if version is None else version
    if version == 0:
        return sql
    return _NAMES.sub(lambda match: f"{match.group(1)}_v{version}", sql)
