"""The engine fixtures themselves: a real PostgreSQL and a real Redis answer on loopback, one per test."""

from __future__ import annotations

import psycopg
import redis

from tests.support.engines import PostgresServer, RedisServer


def test_postgres_answers_and_each_test_gets_its_own_database(postgres: PostgresServer, pg_url: str) -> None:
    with psycopg.connect(pg_url, connect_timeout=30) as conn:
        version = conn.execute("SHOW server_version_num").fetchone()
        assert version is not None and int(version[0]) >= 150000
        conn.execute("CREATE TABLE mine (x int)")
    other = postgres.create_database()
    try:
        with psycopg.connect(other, connect_timeout=30) as conn:
            row = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'mine'").fetchone()
            assert row == (0,)
    finally:
        postgres.drop_database(other)


def test_postgres_listens_on_loopback_only(postgres: PostgresServer) -> None:
    with psycopg.connect(postgres.url(), connect_timeout=30) as conn:
        row = conn.execute("SHOW listen_addresses").fetchone()
    assert row == ("127.0.0.1",)


def test_redis_answers_and_starts_empty(redis_server: RedisServer, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        assert client.ping()
        assert client.dbsize() == 0
        client.set("left-over", "1")
    finally:
        client.close()


def test_redis_url_empties_what_an_earlier_test_left(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    try:
        assert client.get("left-over") is None
    finally:
        client.close()


def test_a_second_redis_takes_another_port(redis_server: RedisServer) -> None:
    with RedisServer() as other:
        assert other.port != redis_server.port
        client = redis.Redis(host="127.0.0.1", port=other.port, socket_timeout=10)
        try:
            assert client.ping()
        finally:
            client.close()


def test_redis_start_retries_when_its_port_is_taken(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    from tests.support import engines

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(engines, "free_port", lambda: next(ports, None) or engines_free_port())
        with RedisServer() as server:
            assert server.port != taken
            client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)
            try:
                assert client.ping()
            finally:
                client.close()


def test_postgres_start_retries_when_its_port_is_taken(postgres: PostgresServer, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    from tests.support import engines

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        ports = iter([taken])
        monkeypatch.setattr(engines, "free_port", lambda: next(ports, None) or engines_free_port())
        with PostgresServer(postgres.bindir) as server:
            assert server.port != taken
            with psycopg.connect(server.url(), connect_timeout=30) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)


def engines_free_port() -> int:
    from tests.support.procs import free_port

    return free_port()
