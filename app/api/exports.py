"""Streaming a whole audience as NDJSON or CSV, in constant memory.

The service opens one read snapshot (app.service.AssignmentService.export); this module turns its
chunks of members into lines as the client reads them, so memory holds one chunk whatever the
audience's size. The snapshot's change-feed position goes out as a header before the first row:
export, then poll GET /v1/changes?since=<it> and nothing is missed or seen twice.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable
from contextlib import ExitStack
from enum import StrEnum

import anyio
import orjson
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.audience.consent import Purpose
from app.service import AssignmentService
from app.store.repository import MemberRow

FEED_CURSOR_HEADER = "Segments-Feed-Cursor"


class ExportFormat(StrEnum):
    JSON = "json"  # the paged JSON of the contract
    NDJSON = "ndjson"
    CSV = "csv"


MEDIA_TYPES = {
    ExportFormat.JSON: "application/json",
    ExportFormat.NDJSON: "application/x-ndjson",
    ExportFormat.CSV: "text/csv",
}


class Identifiers(StrEnum):
    """Which hashed identifiers an export carries, in whose format."""

    NONE = "none"
    GOOGLE = "google"  # Customer Match: phone hashed as E.164 with its +
    META = "meta"  # custom audiences: phone hashed as digits only


def negotiate(requested: ExportFormat | None, accept: str | None) -> ExportFormat:
    """?format= wins; otherwise the first of NDJSON or CSV the Accept header names; else JSON."""
    if requested is not None:
        return requested
    for part in (accept or "").split(","):
        media = part.split(";")[0].strip().lower()
        for export_format, media_type in MEDIA_TYPES.items():
            if media == media_type:
                return export_format
    return ExportFormat.JSON


def member_fields(member: MemberRow, identifiers: Identifiers) -> dict[str, str | None]:
    """The hashed identifiers of one member in the platform's format (empty for NONE)."""
    if identifiers is Identifiers.NONE:
        return {}
    phone = member.phone_sha256 if identifiers is Identifiers.GOOGLE else member.phone_digits_sha256
    return {"email_sha256": member.email_sha256, "phone_sha256": phone}


def _timestamp(member: MemberRow) -> str:
    return member.entered_at.isoformat(timespec="microseconds").replace("+00:00", "Z")


def ndjson_lines(segment: str, identifiers: Identifiers) -> Callable[[list[MemberRow]], bytes]:
    def render(members: list[MemberRow]) -> bytes:
        return b"".join(
            orjson.dumps(
                {"customer_id": m.customer_id, "segment": segment, "entered_at": _timestamp(m)}
                | member_fields(m, identifiers),
                option=orjson.OPT_APPEND_NEWLINE,
            )
            for m in members
        )

    return render


def csv_header(identifiers: Identifiers) -> list[str]:
    header = ["customer_id", "segment", "entered_at"]
    return header + (
        ["email_sha256", "phone_sha256"] if identifiers is not Identifiers.NONE else []
    )


def csv_lines(segment: str, identifiers: Identifiers) -> Callable[[list[MemberRow]], bytes]:
    def render(members: list[MemberRow]) -> bytes:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")  # quotes ids holding commas or quotes
        for m in members:
            writer.writerow(
                [m.customer_id, segment, _timestamp(m)]
                + [v or "" for v in member_fields(m, identifiers).values()]
            )
        return out.getvalue().encode()

    return render


async def stream_audience(
    service: AssignmentService,
    segment_key: str,
    purpose: Purpose,
    export_format: ExportFormat,
    identifiers: Identifiers,
) -> StreamingResponse:
    """The audience as a streamed response; the snapshot opens before the headers go out, so an
    unknown segment is still a plain 404."""
    resources = ExitStack()
    export = await run_in_threadpool(resources.enter_context, service.export(segment_key, purpose))
    if export_format is ExportFormat.CSV:
        render = csv_lines(segment_key, identifiers)
        first = (",".join(csv_header(identifiers)) + "\n").encode()
    else:
        render = ndjson_lines(segment_key, identifiers)
        first = b""

    async def close() -> None:
        # shielded: on a client disconnect the stream is cancelled, and the connection and its
        # snapshot must still go back to the pool (closing twice is harmless)
        with anyio.CancelScope(shield=True):
            await run_in_threadpool(resources.close)

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            while True:
                chunk = await run_in_threadpool(next, export.chunks, None)
                if chunk is None:
                    return
                yield render(chunk)
        finally:
            await close()

    extension = export_format.value
    return StreamingResponse(
        body(),
        media_type=MEDIA_TYPES[export_format],
        headers={
            FEED_CURSOR_HEADER: export.feed_cursor,
            "Content-Disposition": f'attachment; filename="{segment_key}-{purpose}.{extension}"',
            "Cache-Control": "no-store",
        },
        background=BackgroundTask(close),
    )
