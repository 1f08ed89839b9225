"""The agent URL policy's decisions (issue 10, SSRF), without any network traffic: only
IP literals and 'localhost' (resolved from /etc/hosts) are used."""

from __future__ import annotations

import pytest

from berth.domain.deploy import Instance, Role
from berth.domain.errors import InvalidInput
from berth.domain.workspace import Runtime, Workspace
from berth.services.url_policy import AgentUrlPolicy, parse_networks
from berth.wire import container_name


def policy(networks: str = "") -> AgentUrlPolicy:
    return AgentUrlPolicy(parse_networks(networks))


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8000/", "https://127.9.9.9/a2a", "http://[::1]:81/", "http://localhost:9/"],
)
async def test_loopback_is_allowed(url: str) -> None:
    assert await policy().check(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local or cloud metadata"),
        ("http://169.254.1.1:8080/", "link-local or cloud metadata"),
        ("http://[fe80::1]/", "link-local or cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "link-local or cloud metadata"),
        ("http://100.100.100.200/", "link-local or cloud metadata"),
        ("http://[fd00:ec2::254]/", "link-local or cloud metadata"),
        ("http://0.0.0.0:8080/", "link-local or cloud metadata"),
        ("http://10.0.0.5/", "outside loopback and BERTH_AGENT_NETWORKS"),
        ("http://192.168.1.10/", "outside loopback and BERTH_AGENT_NETWORKS"),
        ("http://8.8.8.8/", "outside loopback and BERTH_AGENT_NETWORKS"),
        ("http://user:pw@127.0.0.1/", "credentials in the URL"),
    ],
)
async def test_refused_by_default(url: str, why: str) -> None:
    with pytest.raises(InvalidInput) as e:
        await policy().check(url)
    assert e.value.code == "agent_url_refused" and why in e.value.message


async def test_configured_networks() -> None:
    p = policy("10.0.0.0/8, 2001:db8::/32")
    assert await p.check("http://10.1.2.3:9000/") == "http://10.1.2.3:9000/"
    assert await p.check("http://[2001:db8::7]/")
    with pytest.raises(InvalidInput):
        await p.check("http://192.168.0.1/")
    # a broad range does not open link-local or metadata addresses...
    wide = policy("0.0.0.0/0,::/0")
    assert await wide.check("http://203.0.113.9/")
    for url in ("http://169.254.169.254/", "http://[fe80::2]/"):
        with pytest.raises(InvalidInput):
            await wide.check(url)
    # ...only a range inside them, named explicitly, does
    assert await policy("169.254.10.0/24").check("http://169.254.10.5/")
    with pytest.raises(InvalidInput):
        await policy("169.254.10.0/24").check("http://169.254.169.254/")


async def test_a_docker_workspace_may_name_its_own_container_only() -> None:
    ws = Workspace(id="0123456789abcdef", name="d", runtime=Runtime.DOCKER)
    own = f"http://{container_name(ws.id)}:8000"
    assert await policy().check(own, ws) == own
    with pytest.raises(InvalidInput):  # a container address of the network is not a name
        await policy().check("http://172.18.0.5:8000", ws)
    # a deploy's next version runs in a container of its own (ws-<id>-v2), the old one's not
    v2 = f"http://{container_name(ws.id, 2)}:8000"
    with pytest.raises(InvalidInput):  # no deploy running: no second container
        await policy().check(v2, ws)
    ws.peer = Instance(2, Role.NEXT, "h", image="img")
    assert await policy().check(v2, ws) == v2
    with pytest.raises(InvalidInput):
        await policy().check(f"http://{container_name(ws.id, 3)}:8000", ws)
    process = Workspace(id="0123456789abcdef", name="p", runtime=Runtime.PROCESS)
    with pytest.raises(InvalidInput):  # the container-name rule is for Docker workspaces only
        await policy().check("http://169.254.169.254:8000", process)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:80", 42, "http://", "http://[::1"])
async def test_malformed(url: object) -> None:
    with pytest.raises(InvalidInput):
        await policy().check(url)


def test_networks_must_parse() -> None:
    with pytest.raises(ValueError, match="not a CIDR"):
        parse_networks("10.0.0.0/8,nonsense")
