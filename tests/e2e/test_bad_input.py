"""Issue #2 §5: every bad input gets its error, nothing is forwarded, berth keeps working."""

import pytest

from tests.e2e.harness import ADMIN, BOTH_PATHS, create, reply_text

pytestmark = pytest.mark.slow

A2A = "/v1/workspaces/bad/a2a"


@BOTH_PATHS
async def test_proxy_bad_input(berth_server):
    async with berth_server.client() as c:
        await create(c, "bad")
        h = {"content-type": "application/json", "a2a-version": "1.0"}

        async def rpc(raw: bytes, status: int = 200, path: str = A2A, headers=None):
            r = await c.post(path, content=raw, headers=headers or h)
            assert r.status_code == status, r.text
            return r.json()["error"]

        assert (await rpc(b"{not json"))["code"] == -32700
        assert (await rpc(b"[]"))["code"] == -32600
        assert (await rpc(b'[{"jsonrpc":"2.0","id":1,"method":"SendMessage"}]'))["code"] == -32600
        assert (await rpc(b'{"jsonrpc":"1.0","id":1,"method":"SendMessage"}'))["code"] == -32600
        assert (await rpc(b'{"id":1,"params":{}}'))["code"] == -32600
        e = await rpc(b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}')
        assert e["code"] == -32602 and "params.message" in e["message"]
        assert (await rpc(b'{"jsonrpc":"2.0","id":1,"method":"message/send"}'))["code"] == -32602
        big = (
            b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{"message":{"parts":[{"text":"'
            + b"x" * (1024 * 1024)
            + b'"}]}}}'
        )
        assert "limit" in (await rpc(big, 413))["message"]
        assert (
            await rpc(
                b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}',
                404,
                "/v1/workspaces/nope/a2a",
            )
        )["code"] == -32001
        wait_bad = {**h, "x-berth-wait": "soon"}
        assert (
            await rpc(
                b'{"jsonrpc":"2.0","id":1,"method":"SendMessage","params":{}}',
                400,
                headers=wait_bad,
            )
        )["code"] == -32600
        # nothing was accepted
        assert (await c.get("/v1/workspaces/bad/deliveries")).json()["deliveries"] == []
        # trailing slash answers too (no redirect), and the service keeps working
        r = await c.post(
            A2A + "/",
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "SendMessage",
                "params": {
                    "message": {
                        "role": "ROLE_USER",
                        "messageId": "after",
                        "parts": [{"text": "still here"}],
                    }
                },
            },
            headers={"a2a-version": "1.0"},
        )
        assert r.status_code == 200 and reply_text(r.json()) == "echo: still here"


@BOTH_PATHS
async def test_auth(berth_server):
    async with berth_server.client() as c:
        ws = await create(c, "authz")
        import httpx

        async with httpx.AsyncClient(base_url=berth_server.url) as anon:
            r = await anon.get("/v1/workspaces")
            assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
            r = await anon.get("/v1/workspaces", headers={"authorization": "Bearer wrong"})
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
            r = await anon.get("/v1/workspaces", headers={"authorization": f"Bearer {ws['token']}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
            r = await anon.post("/v1/workspaces/authz/a2a", json={})
            assert r.status_code == 401
            # a workspace's caller credential may call a workspace whose allow-list names it
            # (the caller is then that workspace); by default only the operator may
            body = {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "SendMessage",
                "params": {
                    "message": {
                        "role": "ROLE_USER",
                        "messageId": "tok-1",
                        "parts": [{"text": "hi"}],
                    }
                },
            }
            auth = {"authorization": f"Bearer {ws['token']}", "a2a-version": "1.0"}
            r = await anon.post("/v1/workspaces/authz/a2a", headers=auth, json=body)
            assert r.status_code == 403 and r.json()["error"]["code"] == -32600
            assert "not allowed" in r.json()["error"]["message"]
            ok = await c.post("/v1/workspaces/authz/allow", json={"callers": ["authz"]})
            assert ok.status_code == 200, ok.text
            r = await anon.post("/v1/workspaces/authz/a2a", headers=auth, json=body)
            assert r.status_code == 200 and reply_text(r.json()) == "echo: hi"
            r = await anon.post("/v1/agents/heartbeat", json={"active_tasks": 0})
            assert r.status_code == 401
            r = await anon.post(
                "/v1/agents/heartbeat", headers={"authorization": f"Bearer {ADMIN}"}, json={}
            )
            assert r.status_code == 403  # the operator's token is not an agent's
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                assert (await anon.get(path)).status_code == 200


@BOTH_PATHS
async def test_management_bad_input(berth_server):
    async with berth_server.client() as c:
        cases = [
            ({"name": "Bad Name", "command": ["x"]}, 422, "name"),
            ({"name": "ok", "command": []}, 422, "command"),
            ({"name": "ok", "runtime": "vm", "command": ["x"]}, 422, "runtime"),
            ({"name": "ok", "runtime": "docker"}, 422, "image"),
            ({"name": "ok", "command": ["x"], "max_concurrency": 0}, 422, "max_concurrency"),
            ({"name": "ok", "command": ["x"], "drain_seconds": -1}, 422, "drain_seconds"),
            (
                {"name": "ok", "command": ["x"], "restart_policy": "sometimes"},
                422,
                "restart_policy",
            ),
            ({"name": "ok", "command": ["x"], "env": {"A": 1}}, 422, "env"),
            ({"name": "ok", "command": ["x"], "env": {"BERTH_URL": "x"}}, 422, "BERTH_"),
            ({"name": "ok", "command": ["x"], "colour": "red"}, 422, "colour"),
        ]
        for body, status, word in cases:
            r = await c.post("/v1/workspaces", json=body)
            assert r.status_code == status, (body, r.text)
            err = r.json()["error"]
            assert err["code"] == "invalid_input" and word in err["message"], (body, err)
        r = await c.post("/v1/workspaces", content=b"{oops")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        await create(c, "dupe", online=False)
        r = await c.post("/v1/workspaces", json={"name": "dupe", "command": ["x"]})
        assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
        for method, path in (
            ("GET", "/v1/workspaces/ghost"),
            ("DELETE", "/v1/workspaces/ghost"),
            ("POST", "/v1/workspaces/ghost/restart"),
            ("GET", "/v1/deliveries/ghost"),
            ("POST", "/v1/deliveries/ghost/cancel"),
            ("GET", "/v1/workspaces/ghost/restarts"),
        ):
            r = await c.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"].endswith("not_found"), (
                path,
                r.text,
            )
        r = await c.post("/v1/workspaces/dupe/restart", json={"drain_seconds": -5})
        assert r.status_code == 422
        r = await c.post("/v1/workspaces/dupe/resume")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_paused"
        r = await c.get("/v1/workspaces/dupe/deliveries?status=bogus")
        assert r.status_code == 422
        assert (await c.get("/v1/workspaces")).status_code == 200
