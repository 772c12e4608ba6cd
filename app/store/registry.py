"""Reading and writing the model registry (the `model_versions` table), through SQLAlchemy.

Functions take a Connection inside the caller's transaction and never commit themselves.
Changes to which version is active or shadow take a transaction-scoped lock first, so two
operators activating at once are serialised rather than failing on the unique indexes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, func, select, update

from app.scoring.manifest import Manifest
from app.store.tables import ModelStatus, ModelVersion

model_versions = cast(Table, ModelVersion.__table__)

# any constant: the key of the PostgreSQL advisory lock that serialises registry changes
_REGISTRY_LOCK = 7_291_104_415


@dataclass(frozen=True)
class RegisteredModel:
    """A registry row without its artifact bytes."""

    version: str
    kind: str
    artifact_sha256: str
    status: ModelStatus
    shadow: bool
    source: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    manifest: Manifest


@dataclass(frozen=True)
class ServedVersions:
    """What the registry says every process should serve: (version, sha256) pairs."""

    active: tuple[str, str] | None
    shadow: tuple[str, str] | None


_LISTED = [c for c in model_versions.c if c.name != "artifact"]


def lock(conn: Connection) -> None:
    """Serialise registry changes until the transaction ends."""
    conn.execute(select(func.pg_advisory_xact_lock(_REGISTRY_LOCK)))


def insert(
    conn: Connection,
    *,
    version: str,
    kind: str,
    sha256: str,
    manifest: dict[str, Any],
    artifact: bytes,
    source: str,
    now: datetime,
) -> None:
    conn.execute(
        model_versions.insert().values(
            version=version,
            kind=kind,
            artifact_sha256=sha256,
            manifest=manifest,
            artifact=artifact,
            status=ModelStatus.CANDIDATE,
            shadow=False,
            source=source[:1024],
            created_at=now,
        )
    )


def find(conn: Connection, version: str) -> RegisteredModel | None:
    row = (
        conn.execute(select(*_LISTED).where(model_versions.c.version == version)).mappings().first()
    )
    return _registered(row) if row is not None else None


def listed(conn: Connection) -> list[RegisteredModel]:
    """Every version, newest registration first."""
    query = select(*_LISTED).order_by(
        model_versions.c.created_at.desc(), model_versions.c.version.desc()
    )
    return [_registered(row) for row in conn.execute(query).mappings()]


def artifact_of(conn: Connection, version: str) -> tuple[dict[str, Any], bytes] | None:
    # the manifest as stored (JSON): the artifact's verification parses and checks it
    """The stored manifest and skops bytes of a version."""
    row = conn.execute(
        select(model_versions.c.manifest, model_versions.c.artifact).where(
            model_versions.c.version == version
        )
    ).first()
    return (row[0], bytes(row[1])) if row is not None else None


def served(conn: Connection) -> ServedVersions:
    """The active and shadow versions: the cheap query every worker polls."""
    rows = conn.execute(
        select(
            model_versions.c.version,
            model_versions.c.artifact_sha256,
            model_versions.c.status,
            model_versions.c.shadow,
        ).where((model_versions.c.status == ModelStatus.ACTIVE) | model_versions.c.shadow)
    ).all()
    active = next(((r[0], r[1]) for r in rows if r[2] == ModelStatus.ACTIVE), None)
    shadow = next(((r[0], r[1]) for r in rows if r[3]), None)
    return ServedVersions(active, shadow)


def make_active(conn: Connection, version: str, now: datetime) -> str | None:
    """Retire the active version and activate `version` (no longer shadow); returns the retired one."""
    previous = conn.execute(
        select(model_versions.c.version).where(model_versions.c.status == ModelStatus.ACTIVE)
    ).scalar()
    if previous == version:
        return None
    if previous is not None:
        conn.execute(
            update(model_versions)
            .where(model_versions.c.version == previous)
            .values(status=ModelStatus.RETIRED, retired_at=now)
        )
    conn.execute(
        update(model_versions)
        .where(model_versions.c.version == version)
        .values(status=ModelStatus.ACTIVE, shadow=False, activated_at=now, retired_at=None)
    )
    return cast(str | None, previous)


def make_shadow(conn: Connection, version: str | None) -> None:
    """Make `version` the shadow (None: no shadow)."""
    conn.execute(update(model_versions).where(model_versions.c.shadow).values(shadow=False))
    if version is not None:
        conn.execute(
            update(model_versions).where(model_versions.c.version == version).values(shadow=True)
        )


def last_retired(conn: Connection) -> str | None:
    """The version retired most recently: what a rollback goes back to."""
    return cast(
        str | None,
        conn.execute(
            select(model_versions.c.version)
            .where(model_versions.c.status == ModelStatus.RETIRED)
            .order_by(model_versions.c.retired_at.desc())
            .limit(1)
        ).scalar(),
    )


def _registered(row: Any) -> RegisteredModel:
    return RegisteredModel(
        **{
            **row,
            "status": ModelStatus(row["status"]),
            "manifest": Manifest.model_validate(row["manifest"]),
        }
    )
