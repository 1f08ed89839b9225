"""Issue #2 §7: a2a-sdk's own client, on the workspace's card URL through berth."""

import httpx
import pytest

from tests.e2e.harness import ADMIN, create

pytestmark = pytest.mark.slow


async def test_a2a_sdk_client_through_berth(berth_server):
    from a2a.client import ClientConfig, create_client
    from a2a.helpers.proto_helpers import new_text_message
    from a2a.types import Role, SendMessageRequest

    async with berth_server.client() as c:
        await create(c, "sdk-client")
        card = (await c.get("/v1/workspaces/sdk-client/.well-known/agent-card.json")).json()
        proxy = f"{berth_server.url}/v1/workspaces/sdk-client/a2a"
        assert (
            all(i["url"] == proxy for i in card.get("supportedInterfaces", []))
            or card.get("url") == proxy
        )

    async with httpx.AsyncClient(headers={"authorization": f"Bearer {ADMIN}"}, timeout=30) as http:
        client = await create_client(
            f"{berth_server.url}/v1/workspaces/sdk-client",
            ClientConfig(streaming=False, httpx_client=http),
        )
        texts = []
        request = SendMessageRequest(message=new_text_message("through berth", role=Role.ROLE_USER))
        async for event in client.send_message(request):
            texts.append(str(event))
        assert any("echo: through berth" in t for t in texts), texts
