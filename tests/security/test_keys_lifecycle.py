"""Keys with a lifecycle (issue 11, found 7 and 9; build 4): create --json, list without
secrets, expiry, rotation with a grace, the HTTP key routes of an admin key, batched
last_used_at, and no 403/404 oracle between projects."""

from __future__ import annotations

import uuid

import httpx
import msgspec
import pytest

from tests.service import Service, cli
from tests.support import wait_for


def new_key(service: Service, project: str, scope: str, *extra: str) -> dict[str, object]:
    """`keys create ... --json`: the last stdout line parsed."""
    out = cli(
        service.env, "keys", "create", "--project", project, "--scope", scope, "--json", *extra
    )
    record = msgspec.json.decode(out.strip().splitlines()[-1])
    assert isinstance(record, dict)
    return record


def bearer(key: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_create_json_last_line_and_plain_output(service: Service) -> None:
    project = "kl" + uuid.uuid4().hex[:8]
    record = new_key(service, project, "ingest", "--expires", "30d")
    assert set(record) >= {"id", "key", "projects", "scope", "expires_at", "origins"}
    assert str(record["id"]).startswith("k_") and record["projects"] == [project]
    assert record["scope"] == "ingest" and record["expires_at"] and record["origins"] == []
    plain = cli(service.env, "keys", "create", "--project", project, "--scope", "read")
    assert plain.strip().splitlines()[-1].startswith("ck_r_")


def test_list_never_shows_a_secret(service: Service) -> None:
    project = "kl" + uuid.uuid4().hex[:8]
    made = [new_key(service, project, s) for s in ("ingest", "read", "admin")]
    out = cli(service.env, "keys", "list", "--project", project, "--json")
    listed = msgspec.json.decode(out.strip().splitlines()[-1])
    assert [r["id"] for r in listed] == [m["id"] for m in made]
    for r in listed:
        assert set(r) >= {"id", "projects", "scope", "created_at", "last_used_at", "expires_at"}
        assert "revoked_at" in r and "key" not in r and "key_hash" not in r
    text = cli(service.env, "keys", "list") + out
    for m in made:
        assert str(m["key"]) not in text
        assert str(m["key"])[8:] not in text  # nor any long part of it


def test_expired_key_is_refused(service: Service) -> None:
    project = "kl" + uuid.uuid4().hex[:8]
    short = new_key(service, project, "ingest", "--expires", "2s")
    with httpx.Client(base_url=service.url, timeout=10) as c:
        r = c.post("/v1/events", json=[{"name": "a"}], headers=bearer(short["key"]))
        assert r.status_code == 200, r.text

        async def probe() -> int:
            return c.post(
                "/v1/events", json=[{"name": "a"}], headers=bearer(short["key"])
            ).status_code

        import asyncio

        assert asyncio.run(wait_for(probe, lambda s: s == 401, timeout=6, what="expiry")) == 401
        r = c.post("/v1/events", json=[{"name": "a"}], headers=bearer(short["key"]))
        assert r.json()["error"]["code"] == "key_expired"


def test_rotate_keeps_the_old_secret_until_the_grace_ends(service: Service) -> None:
    project = "kl" + uuid.uuid4().hex[:8]
    old = new_key(service, project, "ingest")
    with httpx.Client(base_url=service.url, timeout=10) as c:
        assert (
            c.post("/v1/events", json=[{"name": "a"}], headers=bearer(old["key"])).status_code
            == 200
        )
        out = cli(service.env, "keys", "rotate", str(old["id"]), "--grace", "3s", "--json")
        new = msgspec.json.decode(out.strip().splitlines()[-1])
        assert new["id"] != old["id"] and new["key"] != old["key"]
        assert new["projects"] == [project] and new["scope"] == "ingest"
        for key in (old["key"], new["key"]):  # both work during the grace
            assert (
                c.post("/v1/events", json=[{"name": "a"}], headers=bearer(key)).status_code == 200
            )

        async def probe() -> int:
            return c.post(
                "/v1/events", json=[{"name": "a"}], headers=bearer(old["key"])
            ).status_code

        import asyncio

        asyncio.run(wait_for(probe, lambda s: s == 401, timeout=8, what="grace end"))
        assert (
            c.post("/v1/events", json=[{"name": "a"}], headers=bearer(new["key"])).status_code
            == 200
        )
    plain = cli(service.env, "keys", "rotate", str(new["id"]))
    assert plain.strip().splitlines()[-1].startswith("ck_i_")


def test_http_key_routes_of_an_admin_key(service: Service) -> None:
    project = "kh" + uuid.uuid4().hex[:8]
    other = "kh" + uuid.uuid4().hex[:8]
    admin = new_key(service, project, "admin")
    other_admin = new_key(service, other, "admin")
    base = f"/v1/projects/{project}/keys"
    with httpx.Client(base_url=service.url, timeout=10) as c:
        r = c.post(base, json={"scope": "ingest", "expires": "1d"}, headers=bearer(admin["key"]))
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["key"].startswith("ck_i_") and made["projects"] == [project]
        assert (
            c.post("/v1/events", json=[{"name": "a"}], headers=bearer(made["key"])).status_code
            == 200
        )

        listed = c.get(base, headers=bearer(admin["key"]))
        assert listed.status_code == 200
        ids = {k["id"] for k in listed.json()}
        assert {admin["id"], made["id"]} <= ids and other_admin["id"] not in ids
        assert made["key"] not in listed.text and "key_hash" not in listed.text

        # bad bodies are 4xx naming the problem
        for body, status in (
            ({"scope": "root"}, 422),
            ({"scope": "ingest", "expires": "99y"}, 422),
            ({"scope": "ingest", "origins": ["https://a.example"]}, 422),
        ):
            r = c.post(base, json=body, headers=bearer(admin["key"]))
            assert r.status_code == status and r.json()["error"]["message"], r.text
        r = c.post(base, content=b"{", headers=bearer(admin["key"]))
        assert r.status_code == 400

        # an admin key of another project sees nothing of this one
        assert c.get(base, headers=bearer(other_admin["key"])).status_code == 404
        r = c.delete(f"{base}/{made['id']}", headers=bearer(other_admin["key"]))
        assert r.status_code == 404
        r = c.delete(f"/v1/projects/{other}/keys/{made['id']}", headers=bearer(other_admin["key"]))
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_key"
        # non-admin keys cannot manage keys
        assert c.get(base, headers=bearer(made["key"])).status_code == 403
        # a key cannot revoke itself
        r = c.delete(f"{base}/{admin['id']}", headers=bearer(admin["key"]))
        assert r.status_code == 409
        assert c.delete(f"{base}/k_nosuchkey0", headers=bearer(admin["key"])).status_code == 404

        r = c.delete(f"{base}/{made['id']}", headers=bearer(admin["key"]))
        assert r.status_code == 204 and r.content == b""
        r = c.post("/v1/events", json=[{"name": "a"}], headers=bearer(made["key"]))
        assert r.status_code == 401  # same worker: at once
        revoked = {k["id"]: k for k in c.get(base, headers=bearer(admin["key"])).json()}
        assert revoked[made["id"]]["revoked_at"]


def test_last_used_at_is_written(service: Service) -> None:
    project = "ku" + uuid.uuid4().hex[:8]
    key = new_key(service, project, "read")
    admin = new_key(service, project, "admin")
    with httpx.Client(base_url=service.url, timeout=10) as c:
        assert c.get("/v1/whoami", headers=bearer(key["key"])).status_code == 200

        async def probe() -> object:
            keys = c.get(f"/v1/projects/{project}/keys", headers=bearer(admin["key"])).json()
            c.get("/v1/whoami", headers=bearer(key["key"]))
            return {k["id"]: k["last_used_at"] for k in keys}[key["id"]]

        import asyncio

        # batched: within one flush window (10 s) of the first use
        asyncio.run(wait_for(probe, lambda t: t is not None, timeout=15, interval=0.5))


@pytest.mark.parametrize("scope", ["read", "ingest", "admin"])
def test_no_oracle_between_existing_and_missing_projects(service: Service, scope: str) -> None:
    mine = "ko" + uuid.uuid4().hex[:8]
    theirs = "ko" + uuid.uuid4().hex[:8]
    key = new_key(service, mine, scope)
    new_key(service, theirs, "read")  # theirs exists
    missing = "ko" + uuid.uuid4().hex[:8]
    with httpx.Client(base_url=service.url, timeout=10) as c:
        answers = []
        for project in (theirs, missing):
            r = c.get(f"/v1/projects/{project}/total?name=a", headers=bearer(key["key"]))
            body = r.json()["error"]
            answers.append((r.status_code, body["code"], body["message"].replace(project, "P")))
        assert answers[0] == answers[1] and answers[0][:2] == (404, "unknown_project")
