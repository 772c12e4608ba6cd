"""Writing an audience out: NDJSON lines or CSV rows, with hashed identifiers in the format the
ad platform takes. Shared by the HTTP export (app.api.exports) and `segments export`."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from enum import StrEnum

import orjson

from app.audience.consent import Purpose


@dataclass(frozen=True)
class MemberRow:
    """One member of an audience, as exports write them."""

    customer_id: str
    entered_at: datetime
    email_sha256: str | None
    phone_sha256: str | None
    phone_digits_sha256: str | None


MEMBER_COLUMNS = tuple(field.name for field in fields(MemberRow))


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


# Identifiers in a platform's format exist to be uploaded to that ad platform, which needs the
# customer's advertising opt-in: they come only with the advertising audience.
IDENTIFIERS_NEED_ADVERTISING = (
    "hashed identifiers in Google's or Meta's format are for uploading to an ad platform, "
    "which needs advertising consent: ask for purpose=advertising"
)


def identifiers_allowed(identifiers: Identifiers, purpose: Purpose) -> bool:
    return identifiers is Identifiers.NONE or purpose is Purpose.ADVERTISING


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


# OWASP's CSV injection advice: a cell starting with one of these is read as a formula by
# spreadsheets (=HYPERLINK(…), +cmd|…); prefixed with an apostrophe it is shown as text
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(value: str) -> str:
    """`value` as a CSV cell no spreadsheet runs as a formula."""
    return "'" + value if value.startswith(_FORMULA_START) else value


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
                [spreadsheet_text(m.customer_id), segment, _timestamp(m)]
                + [v or "" for v in member_fields(m, identifiers).values()]
            )
        return out.getvalue().encode()

    return render


def renderer(
    export_format: ExportFormat, segment: str, identifiers: Identifiers
) -> tuple[bytes, Callable[[list[MemberRow]], bytes]]:
    """What goes first (CSV's header row) and how each chunk of members is written."""
    if export_format is ExportFormat.CSV:
        return (",".join(csv_header(identifiers)) + "\n").encode(), csv_lines(segment, identifiers)
    if export_format is ExportFormat.NDJSON:
        return b"", ndjson_lines(segment, identifiers)
    raise ValueError(f"{export_format} is paged, not streamed")
