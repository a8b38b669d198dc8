"""Statements a sync runs for every integration, built once and reused.

SQLAlchemy builds a new statement object per call of ``update(t).where(…).values(…)`` and derives its cache key
again before it finds the compiled SQL in its cache: about 120 µs for an ``UPDATE`` of ten columns, paid by
every statement of every integration of every run. A statement built once with named ``bindparam``\\ s keeps its
cache key (SQLAlchemy memoizes it on the object), so executing it costs only the execution. Only the hot path
(one sync of one integration) uses these; everything else builds its statements as it goes.
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Table, bindparam, insert, select, update


@functools.cache
def select_by_id(table: Table):
    """``SELECT * FROM table WHERE id = :row_id``."""
    return select(table).where(table.c.id == bindparam("row_id"))


@functools.cache
def update_statement(table: Table, columns: tuple[str, ...], fenced_on: str | None = None):
    """``UPDATE table SET <columns> WHERE id = :row_id [AND <fenced_on> = :fence]``: each column set from the
    parameter ``v_<column>`` (``update_params`` builds them)."""
    where = [table.c.id == bindparam("row_id")]
    if fenced_on is not None:
        where.append(table.c[fenced_on] == bindparam("fence"))
    return update(table).where(*where).values({c: bindparam(f"v_{c}") for c in columns})


def update_params(row_id: int, values: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The parameters of an ``update_statement`` setting ``values`` on row ``row_id`` (``extra``: e.g. ``fence``)."""
    params = {f"v_{c}": v for c, v in values.items()}
    params.update(row_id=row_id, **extra)
    return params


def update_by_id(conn, table: Table, row_id: int, values: dict[str, Any]) -> int:
    """``UPDATE table SET <values> WHERE id = row_id``, from a statement kept per table and set of columns.
    Returns the rows updated (0 or 1)."""
    return conn.execute(update_statement(table, tuple(values)), update_params(row_id, values)).rowcount


@functools.cache
def insert_into(table: Table):
    """``INSERT INTO table``; the columns are the keys of the parameters it is executed with."""
    return insert(table)
