"""Issue 11, found 6 and 9: the HTTP layer has timeouts and limits, answers JSON, never
redirects to the Host header, HEAD on the pixel counts nothing, a client that disconnects
mid-body is an INFO line, and 503 bodies carry no internal address."""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from counters import embedded
from counters.harness.servers import Backends
from counters.harness.service import Service, create_key, service_env

MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def svc(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service with short header/body timeouts and a small connection cap."""
    workdir = tmp_path_factory.mktemp("edge-http")
    env = service_env(
        backends,
        workdir,
        COUNTERS_HEADER_TIMEOUT_SECONDS="1",
        COUNTERS_BODY_TIMEOUT_SECONDS="1",
        COUNTERS_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    service = Service(env, workdir / "service.log")
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def ingest_key(svc: Service) -> str:
    return create_key(svc.env, "edgehttp" + uuid.uuid4().hex[:6], "ingest")


def connect(svc: Service) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
    return s


def read_all(s: socket.socket, timeout: float = 10) -> tuple[bytes, float]:
    """Everything until the server closes, and how long that took."""
    s.settimeout(timeout)
    started = time.monotonic()
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    s.close()
    return data, time.monotonic() - started


def json_error(data: bytes) -> tuple[int, str]:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"application/json" in head.lower(), data
    code = httpx.Response(status, content=body).json()["error"]["code"]
    return status, code


def test_slowloris_headers_are_cut_off(svc: Service) -> None:
    s = connect(svc)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    data, took = read_all(s)
    assert took < 5, "the server held an incomplete request head"
    assert json_error(data) == (408, "request_timeout")


def test_idle_connection_without_a_byte_is_closed(svc: Service) -> None:
    s = connect(svc)
    data, took = read_all(s)
    assert took < 5
    assert json_error(data)[0] == 408


def test_stalled_body_gets_408(svc: Service, ingest_key: str) -> None:
    s = connect(svc)
    s.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ingest_key.encode() + b"\r\n"
        b'Content-Length: 100\r\n\r\n[{"name":'
    )
    data, took = read_all(s)
    assert took < 5
    assert json_error(data) == (408, "request_timeout")


def test_huge_header_gets_431(svc: Service) -> None:
    s = connect(svc)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
    data, _ = read_all(s)
    assert json_error(data) == (431, "headers_too_large")


def test_huge_incomplete_header_gets_431_before_it_ends(svc: Service) -> None:
    s = connect(svc)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000)
    data, took = read_all(s)
    assert took < 5
    assert json_error(data) == (431, "headers_too_large")


def test_malformed_request_is_json_400(svc: Service) -> None:
    s = connect(svc)
    s.sendall(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n")
    data, _ = read_all(s)
    assert json_error(data) == (400, "bad_request")


def test_many_idle_sockets_do_not_starve_healthz(svc: Service) -> None:
    idle = [connect(svc) for _ in range(MAX_CONNECTIONS * 5)]
    try:
        # over the cap: answered at once (503 JSON) and closed, never left hanging
        r = httpx.get(svc.url + "/healthz", timeout=5)
        assert r.status_code in (200, 503)
        if r.status_code == 503:
            assert r.json()["error"]["code"] == "too_many_connections"
    finally:
        for s in idle:
            s.close()

    def healthy() -> bool:
        try:
            return httpx.get(svc.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    deadline = time.monotonic() + 10
    while not healthy():
        assert time.monotonic() < deadline, "healthz did not recover"
        time.sleep(0.05)


def test_no_trailing_slash_redirect_to_host(svc: Service) -> None:
    r = httpx.get(svc.url + "/v1/whoami/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 404
    assert "location" not in r.headers
    assert r.json()["error"]["code"] == "not_found"


def test_head_on_the_pixel_counts_nothing(svc: Service, ingest_key: str) -> None:
    def accepted() -> float:
        text = httpx.get(svc.url + "/metrics").text
        return sum(
            float(v) for v in re.findall(r"counters_events_accepted_total\{[^}]*\} (\S+)", text)
        )

    before = accepted()
    r = httpx.head(svc.url + "/v1/pixel.gif", params={"key": ingest_key, "name": "click"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert accepted() == before
    r = httpx.get(svc.url + "/v1/pixel.gif", params={"key": ingest_key, "name": "click"})
    assert accepted() == before + 1


def test_client_disconnect_mid_body_is_no_traceback(svc: Service, ingest_key: str) -> None:
    mark = svc.log_path.stat().st_size
    s = connect(svc)
    s.sendall(
        b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + ingest_key.encode() + b"\r\n"
        b'Content-Length: 1000\r\n\r\n[{"name":'
    )
    time.sleep(0.2)  # not synchronisation: lets the handler start reading the body
    s.close()
    deadline = time.monotonic() + 10
    while b"disconnected mid-body" not in svc.log_path.read_bytes()[mark:]:
        assert time.monotonic() < deadline, svc.log_path.read_bytes()[mark:]
        time.sleep(0.05)
    log = svc.log_path.read_bytes()[mark:]
    assert b"Traceback" not in log and b"ERROR" not in log, log


def test_503_body_has_no_address(backends: Backends, tmp_path: Path) -> None:
    vdir = Path(tempfile.mkdtemp(prefix="counters-edge-v-"))
    vdir.chmod(0o755)
    try:
        redis_url = embedded.ensure_valkey(vdir)
        port = redis_url.rsplit(":", 1)[1].split("/")[0]
        own = Backends(redis_url, backends.database_url, "edge503", None)
        env = service_env(own, tmp_path)
        key = create_key(env, "edge503" + uuid.uuid4().hex[:6], "ingest")
        service = Service(env, tmp_path / "service.log")
        service.start()
        try:
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(base_url=service.url, timeout=30) as c:
                assert (
                    c.post("/v1/events", json=[{"name": "a"}], headers=headers).status_code == 200
                )
                embedded.stop_embedded(vdir)
                # the first fails on the open connection, the next ones on connecting
                replies = [
                    c.post("/v1/events", json=[{"name": "a"}], headers=headers) for _ in range(3)
                ]
            for r in replies:
                assert r.status_code == 503 and r.headers["retry-after"]
                error = r.json()["error"]
                assert error["code"] == "redis_unavailable"
                assert error["message"].startswith("redis unavailable: ")
                assert "127.0.0.1" not in r.text and port not in r.text, r.text
        finally:
            service.stop()
        assert port in (tmp_path / "service.log").read_text()  # the detail went to the log
    finally:
        embedded.stop_embedded(vdir)
        shutil.rmtree(vdir, ignore_errors=True)
