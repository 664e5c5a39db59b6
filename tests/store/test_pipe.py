"""The pipelined hot-path connection against real redis-server processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import open_store
from gateway.store.pipe import HOLD_BEHIND, PipeError, RedisPipe, ReplyError
from gateway.store.resp import pack
from tests.redis_servers import RedisServer, start_redis

ECHO = "return {KEYS[1], ARGV[1]}"


async def test_concurrent_calls_each_get_their_own_reply(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    script = store.client.register_script(ECHO)
    assert store.pipe is not None
    # (A deadline of seconds: this is about which reply goes to whom, not speed.)
    replies = await asyncio.gather(*(
        store.call(store.run_script(script, [f"k{i}"], [i]), 5.0) for i in range(500)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(500)]
    await store.close()


async def test_calls_that_all_find_the_script_missing_share_one_load(
    redis_server: RedisServer,
) -> None:
    store = open_store(redis_server.url)
    script = store.client.register_script(ECHO + " -- shared load")
    await store.client.script_flush()
    await store.client.config_resetstat()
    replies = await asyncio.gather(*(
        store.call(store.run_script(script, [f"k{i}"], [i]), 5.0) for i in range(300)))
    assert replies == [[f"k{i}".encode(), str(i).encode()] for i in range(300)]
    stats = await store.client.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 1
    assert stats["cmdstat_evalsha"]["calls"] >= 300
    # After the next flush the script is loaded again, once more.
    await store.client.script_flush()
    assert await store.call(store.run_script(script, ["a"], [1])) == [b"a", b"1"]
    stats = await store.client.info("commandstats")
    assert stats["cmdstat_script|load"]["calls"] == 2
    await store.close()


async def test_a_caller_that_gives_up_does_not_shift_later_replies(
    redis_server: RedisServer,
) -> None:
    pipe = RedisPipe(redis_server.url)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await pipe.execute("BLPOP", "gw:test:never", 1)  # answers nil after 1 s
    # The BLPOP's late reply must be consumed and dropped, not handed to this caller.
    assert await pipe.execute("ECHO", "mine") == b"mine"
    await asyncio.sleep(1.0)
    assert await pipe.execute("ECHO", "still mine") == b"still mine"
    await pipe.close()


async def test_scripts_are_reloaded_after_a_script_flush(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    script = store.client.register_script(ECHO)
    assert await store.call(store.run_script(script, ["a"], [1])) == [b"a", b"1"]
    await store.client.script_flush()
    assert await store.call(store.run_script(script, ["b"], [2])) == [b"b", b"2"]
    await store.close()


async def test_error_replies_surface_as_store_errors(redis_server: RedisServer) -> None:
    store = open_store(redis_server.url)
    broken = store.client.register_script("return redis.error_reply('boom')")
    with pytest.raises(StoreUnavailable):
        await store.call(store.run_script(broken, [], []))
    pipe = RedisPipe(redis_server.url)
    with pytest.raises(ReplyError, match="boom"):
        await pipe.evalsha(broken, [], [])
    await pipe.close()
    await store.close()


async def test_reconnects_after_redis_restarts() -> None:
    server = start_redis()
    store = open_store(server.url, deadline_s=0.5)
    script = store.client.register_script(ECHO)
    try:
        assert await store.call(store.run_script(script, ["x"], [1])) == [b"x", b"1"]
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.call(store.run_script(script, ["x"], [2]))
        server = start_redis(port=server.port)  # same port, empty: no scripts loaded
        assert await store.call(store.run_script(script, ["x"], [3])) == [b"x", b"3"]
    finally:
        await store.close()
        server.stop()


async def test_password_and_database_from_the_url() -> None:
    server = start_redis("--requirepass", "s3cret")
    try:
        pipe = RedisPipe(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await pipe.execute("SET", "gw:test:db", "three")
        assert await pipe.execute("GET", "gw:test:db") == b"three"
        await pipe.close()
        nodb = RedisPipe(f"redis://:s3cret@127.0.0.1:{server.port}/0")
        assert await nodb.execute("GET", "gw:test:db") is None
        await nodb.close()
        wrong = RedisPipe(f"redis://:nope@127.0.0.1:{server.port}/0")
        with pytest.raises(PipeError):
            await wrong.execute("PING")
    finally:
        server.stop()


async def test_reads_survive_a_redis_restart_but_writes_are_not_retried() -> None:
    server = start_redis()
    store = open_store(server.url)
    try:
        await store.call(store.client.set("gw:test:k", "v"))
        server.stop()
        server = start_redis(port=server.port)
        # The pooled connection is stale; a read retries once on a fresh one.
        assert await store.read(lambda: store.client.get("gw:test:k")) is None
        server.stop()
        server = start_redis(port=server.port)
        with pytest.raises(StoreUnavailable):  # a write may have run: never resent
            await store.call(store.client.incrby("gw:test:n", 1))
        assert await store.read(lambda: store.client.get("gw:test:n")) is None
    finally:
        await store.close()
        server.stop()


async def test_each_call_keeps_its_own_deadline(redis_server: RedisServer) -> None:
    """One timer serves every waiting call: a short deadline queued behind a long one
    still expires on time, and the long one is not cut short."""
    loop = asyncio.get_running_loop()
    pipe = RedisPipe(redis_server.url)
    await pipe.execute("PING")
    started = loop.time()
    long = asyncio.ensure_future(pipe.execute("BLPOP", "gw:test:never", 1, deadline_s=0.8))
    short = asyncio.ensure_future(pipe.execute("ECHO", "behind", deadline_s=0.2))
    with pytest.raises(TimeoutError):
        await short
    assert 0.15 < loop.time() - started < 0.6  # not held up by the long one (0.8 s)
    assert not long.done()
    with pytest.raises(TimeoutError):
        await long
    assert 0.75 < loop.time() - started < 1.4
    # Both late replies (nil, then "behind") are consumed and dropped, in order.
    await asyncio.sleep(0.5)
    assert await pipe.execute("ECHO", "next", deadline_s=0.5) == b"next"
    await pipe.close()


class _CountingTransport:
    """The real transport, its writes counted."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


async def test_commands_go_out_at_once_until_enough_are_unanswered(
    redis_server: RedisServer,
) -> None:
    pipe = RedisPipe(redis_server.url)
    await pipe.execute("PING")  # connected
    protocol = pipe._protocol
    assert protocol is not None and protocol.transport is not None
    counting = _CountingTransport(protocol.transport)
    protocol.transport = counting  # type: ignore[assignment]
    lone = pipe.submit(b"*2\r\n$4\r\nECHO\r\n$4\r\nlone\r\n")
    assert len(counting.writes) == 1  # written before the caller even awaits
    assert await lone == b"lone"
    counting.writes.clear()
    # Ten commands made in one loop iteration: each goes out as it is made while fewer
    # than HOLD_BEHIND are ahead of it, the rest together at the iteration's end; every
    # caller still gets its own reply, in order.
    calls = [pipe.submit(pack(["ECHO", f"m{i}"])) for i in range(10)]
    assert len(counting.writes) == HOLD_BEHIND
    assert await asyncio.gather(*calls) == [f"m{i}".encode() for i in range(10)]
    assert len(counting.writes) == HOLD_BEHIND + 1
    assert counting.writes[-1].count(b"ECHO") == 10 - HOLD_BEHIND
    await pipe.close()


async def test_a_unix_socket_url_uses_the_pipelined_connection(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = start_redis("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    try:
        url = f"unix://{socket_path}?db=2"
        store = open_store(url)
        assert store.pipe is not None
        assert store.description == f"Redis at {socket_path}"
        script = store.client.register_script(ECHO)
        assert await store.script(script, ["k"], ["v"]) == [b"k", b"v"]
        await store.pipe.execute("SET", "gw:test:unix", "two")
        # The same database through redis-py and through TCP: db 2, not 0.
        assert await store.client.get("gw:test:unix") == b"two"
        tcp = RedisPipe(f"redis://127.0.0.1:{server.port}/2")
        assert await tcp.execute("GET", "gw:test:unix") == b"two"
        await tcp.close()
        await store.close()
        with pytest.raises(PipeError, match=str(tmp_path / "nope.sock")):
            await RedisPipe(f"unix://{tmp_path / 'nope.sock'}").execute("PING")
    finally:
        server.stop()
