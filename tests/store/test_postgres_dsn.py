"""Conninfo strings become the URL asyncpg reads, as libpq would read them."""

from __future__ import annotations

import pytest

from mqpy.model.errors import StoreCannotOpen
from mqpy.store.postgres_dsn import connect_arguments


@pytest.mark.parametrize(
    ("given", "url", "extra"),
    [
        ("postgresql://u@h:5/d", "postgresql://u@h:5/d", {}),
        ("", "", {}),
        ("host=db port=5433 dbname=mqpy user=mq", "postgresql://mq@db:5433/mqpy", {}),
        ("dbname = mqpy", "postgresql:///mqpy", {}),
        (
            "host=db1,db2 port=5432 user=mq password='p w\\'d' sslmode=verify-full",
            "postgresql://mq:p%20w%27d@db1:5432,db2:5432/?sslmode=verify-full",
            {},
        ),
        (
            "host=/run/postgresql connect_timeout=3",
            "postgresql://%2Frun%2Fpostgresql/",
            {"timeout": 3.0},
        ),
    ],
)
def test_conninfo_becomes_a_url(given: str, url: str, extra: dict[str, object]) -> None:
    assert connect_arguments(given) == (url, extra)


def test_a_string_that_is_no_conninfo_is_refused() -> None:
    with pytest.raises(StoreCannotOpen, match="conninfo"):
        connect_arguments("host=db 'oops")
