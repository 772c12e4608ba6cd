"""Opaque paging cursors: a kind prefix (m1 audience members, e2 change events; e1, the feed's
cursor before issue 14, is still read) and the last position, base64url. The prefix keeps one
kind of cursor from being used for the other."""

from __future__ import annotations

import base64
import binascii
import itertools
import re

from app.errors import InvalidCursor
from app.scoring.validation import customer_id_problem
from app.store.audiences import FeedPosition

MEMBERS_CURSOR = "m1:"
CHANGES_CURSOR = "e2:"
# an event id of the feed before issue 14: its events were stamped 0 and keep their id order
OLD_CHANGES_CURSOR = "e1:"
_DIGITS = "(?:0|[1-9][0-9]{0,18})"  # ASCII digits only ("²" is a digit to str.isdigit)
# stamp.id, then for an export's position .xmin:xmax:running (a pg_snapshot)
_FEED_POSITION = re.compile(
    rf"({_DIGITS})\.({_DIGITS})(?:\.({_DIGITS}):({_DIGITS}):((?:{_DIGITS},)*{_DIGITS})?)?"
)
# An export's position names the transactions writing at its snapshot's moment: at most this
# many, so that its cursor stays within ?since='s 8 KB (app.api.audiences). With more (a fleet
# far larger than any here), the export's position drops the snapshot: following the feed from
# it may then repeat a change the export holds, never miss one.
MOST_RUNNING = 500


def members_cursor(customer_id: str) -> str:
    """The audience-page cursor that continues after `customer_id`."""
    return _encode(MEMBERS_CURSOR, customer_id)


def feed_cursor(position: FeedPosition) -> str:
    """The change-feed cursor that continues from `position`."""
    text = f"{position.stamp}.{position.event_id}"
    if position.snapshot is not None and position.snapshot.count(",") < MOST_RUNNING:
        text += f".{position.snapshot}"
    return _encode(CHANGES_CURSOR, text)


def decode_members_cursor(cursor: str) -> str:
    customer_id = _decode(MEMBERS_CURSOR, cursor, "cursor")
    if customer_id_problem(customer_id):
        raise InvalidCursor()
    return customer_id


def decode_feed_cursor(cursor: str) -> FeedPosition:
    text = _decode(CHANGES_CURSOR, cursor, "since", also=OLD_CHANGES_CURSOR)
    found = _FEED_POSITION.fullmatch(text)
    if found is None:
        raise InvalidCursor("since")
    stamp, event_id, oldest, next_id, running = (found[i] for i in range(1, 6))
    if int(stamp) >= 2**63 or int(event_id) >= 2**63:  # the columns' range
        raise InvalidCursor("since")
    if oldest is None:
        return FeedPosition(int(stamp), int(event_id))
    ids = [int(i) for i in running.split(",")] if running else []
    # what PostgreSQL's pg_snapshot input requires: xmin <= running < xmax, non-decreasing
    if (
        len(ids) > MOST_RUNNING
        or int(oldest) > int(next_id)
        or any(a > b for a, b in itertools.pairwise(ids))
        or (ids and (ids[0] < int(oldest) or ids[-1] >= int(next_id)))
    ):
        raise InvalidCursor("since")
    return FeedPosition(int(stamp), int(event_id), f"{oldest}:{next_id}:{running or ''}")


def _encode(kind: str, position: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}{position}".encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str, parameter: str, *, also: str | None = None) -> str:
    """The position a cursor of `kind` holds (an `also` cursor's: "0." and its position, the
    event id of the feed before stamps, whose events were stamped 0)."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidCursor(parameter) from exc
    if text.startswith(kind):
        return text[len(kind) :]
    if also is not None and text.startswith(also):
        return f"0.{text[len(also) :]}"
    raise InvalidCursor(parameter)
