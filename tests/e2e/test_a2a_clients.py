"""Issue #5: a2a-sdk's own client through berth, streaming and not, v1.0 and v0.3.

The card is read through berth (every interface URL rewritten to berth's proxy); the
client then talks only to berth. For v0.3 the 1.0 interface is taken out of the card, so
the client's factory picks its v0.3 transport, as an older client would.
"""

from __future__ import annotations

import httpx
import pytest
from google.protobuf.json_format import MessageToDict

from tests.e2e.harness import ADMIN, create

pytestmark = pytest.mark.slow


async def _client(
    berth_url: str, ref: str, http: httpx.AsyncClient, *, streaming: bool, version: str
):
    from a2a.client import ClientConfig, ClientFactory
    from a2a.types import AgentCard
    from google.protobuf.json_format import ParseDict

    raw = (await http.get(f"{berth_url}/v1/workspaces/{ref}/.well-known/agent-card.json")).json()
    proxy = f"{berth_url}/v1/workspaces/{ref}/a2a"
    assert {i["url"] for i in raw["supportedInterfaces"]} == {proxy}
    raw["supportedInterfaces"] = [
        i for i in raw["supportedInterfaces"] if i["protocolVersion"] == version
    ]
    card = ParseDict(raw, AgentCard(), ignore_unknown_fields=True)
    return ClientFactory(ClientConfig(streaming=streaming, httpx_client=http)).create(card)


def _events(responses) -> list[dict]:
    return [MessageToDict(r) for r in responses]


@pytest.mark.parametrize("version", ["1.0", "0.3"])
@pytest.mark.parametrize("streaming", [False, True], ids=["send", "stream"])
async def test_a2a_sdk_clients_through_berth(berth_server, version: str, streaming: bool):
    from a2a.helpers.proto_helpers import new_text_message
    from a2a.types import GetTaskRequest, Role, SendMessageRequest

    async with berth_server.client() as c:
        await create(c, "clients")
    async with httpx.AsyncClient(headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as http:
        client = await _client(
            berth_server.url, "clients", http, streaming=streaming, version=version
        )
        # a Message reply
        got = _events(
            [
                e
                async for e in client.send_message(
                    SendMessageRequest(message=new_text_message("hello", role=Role.ROLE_USER))
                )
            ]
        )
        assert got[-1]["message"]["parts"][0]["text"] == "echo: hello"
        # a Task reply: in a stream the events come in the agent's order
        got = _events(
            [
                e
                async for e in client.send_message(
                    SendMessageRequest(
                        message=new_text_message("task sleep:0.3 hi", role=Role.ROLE_USER)
                    )
                )
            ]
        )
        kinds = [next(iter(e)) for e in got]
        if streaming:
            assert kinds == ["task", "artifactUpdate", "statusUpdate"], got
            assert got[0]["task"]["status"]["state"] == "TASK_STATE_WORKING"
            assert got[-1]["statusUpdate"]["status"]["state"] == "TASK_STATE_COMPLETED"
            task_id = got[0]["task"]["id"]
        else:
            assert (
                kinds == ["task"] and got[0]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
            ), got
            task_id = got[0]["task"]["id"]
        task = MessageToDict(await client.get_task(GetTaskRequest(id=task_id)))
        assert task["status"]["state"] == "TASK_STATE_COMPLETED"
        assert task["artifacts"][0]["parts"][0]["text"] == "echo: task sleep:0.3 hi"
        await client.close()
    async with berth_server.client() as c:
        methods = {
            d["method"]
            for d in (await c.get("/v1/workspaces/clients/deliveries")).json()["deliveries"]
        }
    expected = {
        ("1.0", False): "SendMessage",
        ("1.0", True): "SendStreamingMessage",
        ("0.3", False): "message/send",
        ("0.3", True): "message/stream",
    }[(version, streaming)]
    assert methods == {expected}  # the client really spoke that version, through the delivery log
