"""Streaming a whole audience as NDJSON or CSV, in constant memory.

The service opens one read snapshot (app.service.audiences.AudienceService.export); this module
turns its chunks of members into lines as the client reads them, so memory holds one chunk whatever the
audience's size. The snapshot's change-feed position goes out as a header before the first row:
export, then poll GET /v1/changes?since=<it> and nothing is missed or seen twice.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import ExitStack

import anyio
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from app.audience.consent import Purpose
from app.audience.formats import MEDIA_TYPES, ExportFormat, Identifiers, renderer
from app.service.audiences import AudienceService

log = logging.getLogger(__name__)
FEED_CURSOR_HEADER = "Segments-Feed-Cursor"


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


async def stream_audience(
    service: AudienceService,
    segment_key: str,
    purpose: Purpose,
    export_format: ExportFormat,
    identifiers: Identifiers,
) -> StreamingResponse:
    """The audience as a streamed response; the snapshot opens before the headers go out, so an
    unknown segment (404) or a full house of exports (429) is still a plain error."""
    resources = ExitStack()
    try:
        export = await run_in_threadpool(
            resources.enter_context, service.export(segment_key, purpose)
        )
    except BaseException:
        # cancelled or failed while opening: the connection goes back now, not to the
        # garbage collector (whose late CLOSE could land in another request's transaction)
        resources.close()
        raise
    first, render = renderer(export_format, segment_key, identifiers)

    async def close() -> None:
        # shielded: on a client disconnect the stream is cancelled, and the connection, its
        # snapshot and its export slot must still be given back (closing twice is harmless).
        # The slot is freed even when closing fails (AudienceService.export releases it in a
        # finally): a stream whose connection died must not hold its slot until a restart.
        try:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(resources.close)
        except Exception:
            log.warning("an audience export ended with its connection broken", exc_info=True)

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
