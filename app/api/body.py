"""Reading JSON request bodies fast (orjson), with an exact error when they are not JSON."""

from __future__ import annotations

import json
from typing import Any

import orjson

from app.errors import InvalidBody


def parse_json(raw: bytes) -> Any:
    """The parsed body. orjson first; the standard library only for what orjson refuses.

    orjson rejects NaN and Infinity (they are not JSON), but clients' JSON encoders often write
    them; the standard parser reads them so validation can say which feature is not finite.
    """
    if not raw:
        raise InvalidBody("is empty: send a JSON object")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        reason = str(exc)[:200] if isinstance(exc, ValueError) else "is nested too deeply"
        raise InvalidBody(f"is not valid JSON: {reason}") from exc
