"""The membership merge: the one statement that updates or inserts a write's memberships and
appends the feed events their moves cause (app.store.assignments.store_batch runs it, holding
the customers' locks), and how its rows reach it:

- a few rows (single requests committed together): one bound JSON parameter, and the statement's
  generic plan. Planning it took longer than running it for one row (0.4 against 0.3 ms), and
  PostgreSQL planned it anew for every write (its custom plans looked cheaper than the generic
  one). psycopg prepares a statement run five times; its generic plan is made once per
  connection, and again when a table's statistics change. For a few rows any plan of its index
  probes does.
- more rows (a batch): COPYed into the session's staging table (`stage_members`; PostgreSQL
  read 10,000 rows from JSON in 36 ms, from the table in a few), with a plan made for them each
  time, and the tombstones joined as the planner sees fit.

The two are separate statements (prepared apart): a batch never runs a plan made for a few rows.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy import Connection, TextClause, text

from app.audience.profile import PROFILE_COLUMNS
from app.store.driver import Statement, copy_in
from app.store.tables import HISTORY_COLUMNS, MEMBERSHIP_COLUMNS, Cause, FeedEvent

_INCOMING_COLUMNS = """customer_id varchar, segment_id integer, segment_key varchar,
    model_version varchar, distance float8, confidence float8, assigned_at timestamptz,
    email_sha256 varchar, phone_sha256 varchar, phone_digits_sha256 varchar,
    consent_personalization boolean, consent_advertising boolean, id_hash varchar"""
_DUE_COLUMN = "due_at timestamptz"
# A batch's memberships, one row a customer: _INCOMING_COLUMNS and its due time (NULL when the
# write records none). Temporary: each session has its own, emptied at every commit (and its
# rows gone with a rollback); created by a session's first batch.
_STAGING = text(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS staged_memberships ({_INCOMING_COLUMNS}, {_DUE_COLUMN})"
    " ON COMMIT DELETE ROWS"
)
_COPY_STAGED = "COPY staged_memberships FROM STDIN"
_HISTORY_TYPES = """customer_id varchar, segment_id integer, segment_key varchar,
    model_version varchar, distance float8, confidence float8, features json,
    assigned_at timestamptz"""
_EVENT_COLUMNS = """customer_id, segment_id, segment_key, event, model_version, confidence,
    occurred_at, cause, advertising, personalization"""


def _membership_update(sent: str) -> str:
    """The SET list that merges the row `sent` (its alias) into a customer's membership."""
    newer = f"memberships.assigned_at <= {sent}.assigned_at"
    return ",\n".join(
        # the segment follows the latest assignment (a late-committing older one changes nothing)
        [
            f"{c} = CASE WHEN {newer} THEN {sent}.{c} ELSE memberships.{c} END"
            for c in MEMBERSHIP_COLUMNS
            if c != "customer_id"
        ]
        # consent and hashes follow the last word received, whatever its assignment's time (a
        # withdrawal must never be lost); a flag or hash not sent keeps the one sent before
        + [f"{c} = COALESCE({sent}.{c}, memberships.{c})" for c in PROFILE_COLUMNS]
        # entered_at is kept while the segment stays the same
        + [
            f"entered_at = CASE WHEN {newer} AND memberships.segment_key <> {sent}.segment_key"
            f" THEN {sent}.assigned_at ELSE memberships.entered_at END"
        ]
    )


_RETURNED = """memberships.customer_id, memberships.segment_id, memberships.segment_key,
    memberships.model_version, memberships.confidence, memberships.assigned_at,
    memberships.advertising, memberships.personalization"""


# One statement, run holding the customers' locks:
# - customers with a tombstone are dropped, and the history this transaction copied for them
#   is deleted again (checked under the locks that erasure takes too, so an erasure either
#   committed before and is seen here, or comes after and deletes what this commits);
# - known customers' memberships are updated, keeping entered_at while the segment stays the
#   same, and new customers' inserted;
# - events are appended for each purpose's audience (the memberships' generated `advertising`
#   and `personalization` columns, app.store.tables): a customer who moved exits the old
#   segment in the feeds they were in and enters the new one in the feeds they are now in (with
#   the caller's cause: an assignment, time, a model switch); one
#   who stayed but whose consent changed enters or exits that purpose's feed (cause consent).
#   A re-assignment to the same segment is no event. This statement is the only writer of
#   assignment and consent events. Their feed position (stamp, id) is the columns' defaults
#   (app.store.tables.MembershipEvent), taken after the locks.
# Data-modifying CTEs all see the statement's starting snapshot, so `found` is the state the
# update changed.
def _merge_memberships(with_due: bool, few: bool) -> str:
    columns = _INCOMING_COLUMNS + (f", {_DUE_COLUMN}" if with_due else "")
    # LIMIT: the planner's row count (see app.store.events._RECORD)
    rows = (
        f"SELECT * FROM json_to_recordset(CAST(:rows AS json)) AS rows({columns}) LIMIT :count"  # noqa: S608
        if few
        else "SELECT * FROM staged_memberships"
    )
    # the customers with a tombstone: a few rows probe its index one by one (a kept generic
    # plan must not scan a table that grew); a batch, planned for its rows each time, is joined
    # to it as the planner sees fit (a hash join while tombstones are few). Measured the same
    # as the probes for 10,000 rows and no tombstone (bench/batch_breakdown.py); one index scan
    # for all the hashes took 45 ms more (sorting 10,000 of them)
    tombstoned = (
        """SELECT incoming.customer_id FROM incoming
        JOIN erasure_tombstones AS t ON t.id_hash = incoming.id_hash"""
        if not few
        else """SELECT incoming.customer_id FROM incoming
        CROSS JOIN LATERAL (
            SELECT 1 FROM erasure_tombstones AS t WHERE t.id_hash = incoming.id_hash
            LIMIT 1 OFFSET 0
        ) AS tombstone"""
    )
    # a few rows' history, inserted here (a batch's is COPYed before), but the suppressed ones'
    history = (
        ""
        if not few
        else f"""
    history AS (
        INSERT INTO assignments ({", ".join(HISTORY_COLUMNS)})
        SELECT {", ".join(HISTORY_COLUMNS)}
        FROM json_to_recordset(CAST(:history AS json)) AS rows({_HISTORY_TYPES})
        WHERE customer_id NOT IN (SELECT customer_id FROM suppressed)
    ),"""  # noqa: S608 - constant names; the rows are one bound parameter
    )
    # the customers' aggregates' due times, set in the same statement (their rows are locked
    # already: by the event writer's insert, or the refresher's claim)
    due_update = (
        """,
    due AS (
        -- each row found by its key, then updated by its ctid (a join on customer_id let a
        -- plan kept from a small table scan the whole of it: see the comment below)
        UPDATE customer_activity AS a SET due_at = d.due_at, due_cause = NULL
        FROM (
            SELECT i.due_at, found.row_id FROM incoming AS i
            CROSS JOIN LATERAL (
                SELECT ctid AS row_id FROM customer_activity
                WHERE customer_activity.customer_id = i.customer_id OFFSET 0
            ) AS found
            WHERE i.customer_id NOT IN (SELECT customer_id FROM suppressed)
        ) AS d
        WHERE a.ctid = d.row_id
    )"""
        if with_due
        else ""
    )
    return f"""
    WITH incoming AS ({rows}),
    -- Each customer's rows are found by index probes, whatever the planner believes of the
    -- tables' sizes: its plans are prepared and kept, and one made while the tables were small
    -- (a new database) scanned them whole in every write long after they had grown (half the
    -- throughput of single events within a minute). Hence the LATERAL … OFFSET 0 here (a
    -- probe per incoming row; the planner may not turn it into a join) and the ANY(ARRAY(…)).
    suppressed AS ({tombstoned}),{history}
    purged AS (
        -- the EXISTS is checked once, first: with nobody suppressed (nearly always) the
        -- history is not touched at all
        DELETE FROM assignments
        WHERE EXISTS (SELECT FROM suppressed)
          AND customer_id = ANY (ARRAY(SELECT customer_id FROM suppressed))
    ),
    -- each customer's membership as it is (their locks are held: nobody changes it before the
    -- update below), found once: its row for the update, its segment and audiences for the
    -- moves. MATERIALIZED: read once (inlined, PostgreSQL rescanned it per row).
    found AS MATERIALIZED (
        SELECT incoming.*, m.ctid AS row_id, m.segment_id AS old_segment_id,
               m.segment_key AS old_segment_key, m.advertising AS was_advertising,
               m.personalization AS was_personalization
        FROM incoming LEFT JOIN LATERAL (
            SELECT ctid, segment_id, segment_key, advertising, personalization FROM memberships
            WHERE memberships.customer_id = incoming.customer_id
            OFFSET 0
        ) AS m ON true
        WHERE incoming.customer_id NOT IN (SELECT customer_id FROM suppressed)
    ),
{_membership_write(few)}
    recorded AS (
    INSERT INTO membership_events ({_EVENT_COLUMNS})
    SELECT customer_id, segment_id, segment_key, event, model_version, confidence, occurred_at,
           cause, advertising, personalization
    FROM (
        SELECT customer_id, old_segment_id AS segment_id, old_segment_key AS segment_key,
               '{FeedEvent.EXITED}' AS event, model_version, confidence, assigned_at AS occurred_at,
               CAST(:cause AS varchar) AS cause, was_advertising AS advertising,
               was_personalization AS personalization, 0 AS position
        FROM moves WHERE known AND NOT stayed AND (was_advertising OR was_personalization)
        UNION ALL
        SELECT customer_id, segment_id, segment_key, '{FeedEvent.EXITED}', model_version, confidence,
               assigned_at, '{Cause.CONSENT}', was_advertising AND NOT advertising,
               was_personalization AND NOT personalization, 0
        FROM moves WHERE stayed AND ((was_advertising AND NOT advertising)
                                     OR (was_personalization AND NOT personalization))
        UNION ALL
        SELECT customer_id, segment_id, segment_key, '{FeedEvent.ENTERED}', model_version, confidence,
               assigned_at, '{Cause.CONSENT}', advertising AND NOT was_advertising,
               personalization AND NOT was_personalization, 1
        FROM moves WHERE stayed AND ((advertising AND NOT was_advertising)
                                     OR (personalization AND NOT was_personalization))
        UNION ALL
        SELECT customer_id, segment_id, segment_key, '{FeedEvent.ENTERED}', model_version, confidence,
               assigned_at, CAST(:cause AS varchar), advertising, personalization, 1
        FROM moves WHERE NOT stayed AND (advertising OR personalization)
    ) AS changes
    ORDER BY customer_id, position
    ){due_update}
    SELECT customer_id FROM suppressed
    """  # noqa: S608 - constant table and column names; the rows are bound or COPYed


def _membership_write(few: bool) -> str:
    """The `moves` CTE (each customer's membership before and after, and whether it was known)
    and the writes it comes from: a few rows upserted, a batch's updated and inserted."""
    insert = f"""INSERT INTO memberships ({", ".join(MEMBERSHIP_COLUMNS)}, entered_at,
                                 {", ".join(PROFILE_COLUMNS)})
        SELECT {", ".join(MEMBERSHIP_COLUMNS)}, assigned_at, {", ".join(PROFILE_COLUMNS)}
        FROM found"""  # noqa: S608 - constant table and column names
    if few:
        # an upsert: its conflict check probes the primary key, whatever the kept generic plan
        # believes of the table's size (an update joined to the rows found by their ctid was
        # planned, while the table was small, as a scan of all of it)
        return f"""
    merged AS (
        {insert}
        ON CONFLICT (customer_id) DO UPDATE SET
            {_membership_update("excluded")}
        RETURNING {_RETURNED}
    ),
    moves AS (
        SELECT merged.*, found.row_id IS NOT NULL AS known, found.old_segment_id,
               found.old_segment_key,
               COALESCE(found.old_segment_key = merged.segment_key, false) AS stayed,
               COALESCE(found.was_advertising, false) AS was_advertising,
               COALESCE(found.was_personalization, false) AS was_personalization
        FROM merged JOIN found USING (customer_id)
    ),"""  # noqa: S608 - constant table and column names
    # a batch, planned for its rows each time: known customers updated in place by the row
    # found (no second probe, as an upsert's conflict check makes: 10,000 known customers 183
    # against 154 ms), new ones inserted; the two sets are apart, and nobody else inserts these
    # customers meanwhile (their locks)
    return f"""
    updated AS (
        UPDATE memberships SET
            {_membership_update("sent")}
        FROM found AS sent WHERE memberships.ctid = sent.row_id
        RETURNING {_RETURNED}, sent.old_segment_id, sent.old_segment_key,
                  sent.was_advertising, sent.was_personalization
    ),
    inserted AS (
        {insert} WHERE row_id IS NULL
        RETURNING {_RETURNED}
    ),
    moves AS (
        SELECT *, true AS known, COALESCE(old_segment_key = segment_key, false) AS stayed
        FROM updated
        UNION ALL
        SELECT *, CAST(NULL AS integer), CAST(NULL AS varchar), false, false, false, false
        FROM inserted
    ),"""  # noqa: S608 - constant table and column names


_MERGES = {
    (with_due, few): text(_merge_memberships(with_due, few))
    for with_due in (False, True)
    for few in (False, True)
}


def merge_few(
    lock: Statement,
    members: list[dict[str, Any]],
    history: list[dict[str, Any]],
    cause: Cause,
    with_due: bool,
    *,
    committing: bool,
) -> list[Statement]:
    """The customers' `lock`, then the merge of these members (with their due times) and their
    `history` rows (HISTORY_COLUMNS), as statements for one pipeline, the merge's rows (the
    suppressed customers' ids) the second's. `committing`: nothing follows them but COMMIT."""
    parameters = {
        "rows": orjson.dumps(members).decode(),
        "count": len(members),
        "history": orjson.dumps(history).decode(),
        "cause": cause.value,
    }
    merge = (_MERGES[with_due, True], parameters)
    return _planned(lock, "force_generic_plan", merge, committing)


def stage_members(conn: Connection, rows: str) -> None:
    """COPY a batch's memberships (COPY text, one line a customer: _INCOMING_COLUMNS, then its
    due time) into the session's staging table, for merge_many, in the caller's transaction."""
    conn.execute(_STAGING)
    copy_in(conn, _COPY_STAGED, rows)


def merge_many(
    lock: Statement, cause: Cause, with_due: bool, *, committing: bool
) -> list[Statement]:
    """As merge_few, for a batch whose history was COPYed and memberships staged before."""
    merge = (_MERGES[with_due, False], {"cause": cause.value})
    return _planned(lock, "force_custom_plan", merge, committing)


def _planned(lock: Statement, mode: str, merge: Statement, committing: bool) -> list[Statement]:
    """The lock statement also sets how the merge after it is planned (one statement less a
    write: each costs its share of a single write's ~1 ms); the setting is undone after the
    merge, for the caller's later statements, unless only COMMIT follows."""
    clause, parameters = lock
    planned = (_with_plan_mode(clause, mode), parameters)
    return [planned, merge] if committing else [planned, merge, _USUAL_PLANS]


@lru_cache(maxsize=8)
def _with_plan_mode(lock: TextClause, mode: str) -> TextClause:
    return text(f"SELECT set_config('plan_cache_mode', '{mode}', true), ({lock.text})")


_USUAL_PLANS = (text("SET LOCAL plan_cache_mode TO DEFAULT"), None)
