"""Background work at a lower CPU priority (persist/nice.py, the rebuild's compute thread):
a backend is niced for the block and put back after, only where Postgres is local."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest

from counters.core.config import load_settings
from persist.nice import is_local, nice_this_thread, niced_backend


def test_local_urls() -> None:
    assert is_local("postgresql://u@127.0.0.1:5432/db")
    assert is_local("postgresql://u@localhost/db")
    assert is_local("postgresql://u@[::1]:5433/db")
    assert is_local("postgresql:///db?host=/var/run/postgresql")
    assert not is_local("postgresql://u@db.internal:5432/db")
    assert not is_local("postgresql://u@10.0.0.7/db")


async def test_backend_is_niced_for_the_block_then_put_back(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
        before = os.getpriority(os.PRIO_PROCESS, pid)
        async with niced_backend(conn, before + 5, local=True) as niced:
            if not niced:
                pytest.skip("the OS does not let this user renice the Postgres backends")
            assert os.getpriority(os.PRIO_PROCESS, pid) == before + 5
            assert await conn.fetchval("SELECT 1") == 1
        assert os.getpriority(os.PRIO_PROCESS, pid) == before


async def test_nothing_is_niced_when_postgres_is_remote_or_nice_is_0(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        pid = conn.get_server_pid()
        before = os.getpriority(os.PRIO_PROCESS, pid)
        for nice, local in ((5, False), (0, True)):
            async with niced_backend(conn, nice, local=local) as niced:
                assert not niced
                assert os.getpriority(os.PRIO_PROCESS, pid) == before


def test_compute_thread_is_niced_alone() -> None:
    main = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with ThreadPoolExecutor(1, initializer=nice_this_thread, initargs=(main + 3,)) as pool:
        got = pool.submit(lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        assert got.result() == main + 3
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main


def test_reconcile_nice_setting_is_checked() -> None:
    assert load_settings(env={"COUNTERS_RECONCILE_NICE": "19"}).reconcile_nice == 19
    with pytest.raises(ValueError, match="reconcile_nice"):
        load_settings(env={"COUNTERS_RECONCILE_NICE": "20"})
