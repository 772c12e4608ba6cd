"""Audiences: a segment's members under a consent purpose (paged, or exported whole from one
snapshot) and the membership change feed. The HTTP routes and `segments export` both use it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Connection

from app.audience.consent import Purpose
from app.audience.formats import MemberRow
from app.errors import SegmentNotFound, TooManyExports
from app.lifecycle.holder import ModelHolder
from app.service.cursors import (
    decode_feed_cursor,
    decode_members_cursor,
    feed_cursor,
    members_cursor,
)
from app.service.store import Store
from app.store import audiences
from app.store.audiences import MembershipChange


@dataclass(frozen=True)
class MembersPage:
    segment: str
    member_ids: list[str]
    # each member's entry time and hashed identifiers, when asked for (None otherwise)
    records: list[MemberRow] | None
    next_cursor: str | None


@dataclass(frozen=True)
class ChangesPage:
    changes: list[MembershipChange]
    next_cursor: str  # always given: poll again with it, even when this page was empty
    has_more: bool


@dataclass(frozen=True)
class AudienceExport:
    """A whole audience as one snapshot: `chunks` yields its members in id order (iterate it
    once), and `feed_cursor` is the change-feed position of the same snapshot, so a consumer can
    follow the feed from exactly where the export stands."""

    segment: str
    purpose: Purpose
    model_version: str  # the model whose segment it is
    feed_cursor: str
    chunks: Iterator[list[MemberRow]]
    _conn: Connection

    def size(self) -> int:
        """How many members the snapshot holds (a count query; call it before iterating)."""
        return audiences.audience_size(self._conn, self.segment, self.purpose, self.model_version)


class AudienceService:
    def __init__(self, models: ModelHolder, store: Store, *, max_exports: int) -> None:
        self.models = models
        self._store = store
        # each export holds a pooled connection until its reader is done: at most this many
        self._max_exports = max_exports
        self._open_exports = 0
        self._slots = threading.Lock()  # exports open and close on worker threads

    @property
    def open_exports(self) -> int:
        return self._open_exports

    def members(
        self,
        segment_key: str,
        purpose: Purpose,
        cursor: str | None,
        limit: int,
        *,
        records: bool = False,
    ) -> MembersPage:
        """A page of the purpose's audience of the served model's segment, in customer-id
        order: the customers that model put in it; with `records`, their entry times and
        hashed identifiers too."""
        self._check_segment(segment_key)
        after = decode_members_cursor(cursor) if cursor else None
        version = self.models.model.version
        # one extra row tells whether another page follows, without a count query
        page = audiences.AudiencePage(segment_key, purpose, version, after, limit + 1)
        rows: list[MemberRow] | None = None
        with self._store.transaction("lookup") as conn:
            if records:
                rows = audiences.segment_members(conn, page)
                ids = [row.customer_id for row in rows]
            else:
                ids = audiences.segment_member_ids(conn, page)
        more = len(ids) > limit
        return MembersPage(
            segment_key,
            ids[:limit],
            rows[:limit] if rows is not None else None,
            members_cursor(ids[limit - 1]) if more else None,
        )

    @contextmanager
    def export(
        self, segment_key: str, purpose: Purpose, chunk: int = 2_000
    ) -> Iterator[AudienceExport]:
        """The whole audience from one snapshot, streamed `chunk` members at a time.

        One connection and one read transaction (REPEATABLE READ, so the members and the feed
        position agree) stay open while the caller iterates; at most `max_exports` at once,
        more are TooManyExports, so slow readers cannot take every connection."""
        self._check_segment(segment_key)
        version = self.models.model.version
        with self._slots:
            if self._open_exports >= self._max_exports:
                raise TooManyExports(self._max_exports)
            self._open_exports += 1
        try:
            with self._store.transaction("export") as conn:
                audiences.begin_snapshot(conn)
                position = audiences.feed_position(conn)
                chunks = audiences.stream_members(conn, segment_key, purpose, version, chunk)
                try:
                    yield AudienceExport(
                        segment_key, purpose, version, feed_cursor(position), chunks, conn
                    )
                finally:
                    # closed here, on this connection, before it goes back to the pool: left to
                    # the garbage collector, its CLOSE could hit another request's transaction
                    chunks.close()
        finally:
            with self._slots:
                self._open_exports -= 1

    def changes(
        self, segment_key: str | None, purpose: Purpose, cursor: str | None, limit: int
    ) -> ChangesPage:
        """A purpose's entered/exited events after the cursor, in feed order (one segment's,
        or all). A segment of any version this process knows has a feed: its history stays."""
        if segment_key is not None and segment_key not in self.models.segment_names:
            raise SegmentNotFound(segment_key, self.models.model.segments_by_key)
        after = decode_feed_cursor(cursor) if cursor else audiences.START
        with self._store.transaction("lookup") as conn:
            horizon = audiences.feed_horizon(conn)
            rows = audiences.membership_changes(
                conn, segment_key, purpose, after, horizon, limit + 1
            )
        more = len(rows) > limit
        rows = rows[:limit]
        position = after.after(rows[-1].stamp, rows[-1].id) if rows else after
        if not more and position.snapshot is not None:
            # every event of this feed stamped below the horizon is behind: an export's position
            # moves there, and soon has no more use for its snapshot
            position = position.at_least(horizon)
        return ChangesPage(rows, feed_cursor(position), more)

    def _check_segment(self, segment_key: str) -> None:
        """Audiences are the active model's segments (GET /v1/segments lists them)."""
        if segment_key not in self.models.model.segments_by_key:
            raise SegmentNotFound(segment_key, self.models.model.segments_by_key)
