"""Agent URL policy (issue 10, SSRF): an agent URL, given at create or registered by an
agent, is checked before berth sends anything to it.

* loopback (127.0.0.0/8, ::1) is allowed: process agents and Docker's published ports;
* a Docker workspace may also name its own container on berth's Docker network;
* link-local (169.254.0.0/16, fe80::/10) and cloud metadata addresses are refused, unless
  BERTH_AGENT_NETWORKS names a range inside them explicitly;
* any other address only when it is in BERTH_AGENT_NETWORKS (comma-separated CIDRs).

A host name is resolved once, here, and every address it resolves to must be allowed.
berth's agent clients do not follow redirects. What this does not stop (a name that
resolves differently later, DNS rebinding) is written down in docs/security.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from berth.domain.errors import InvalidInput, UrlRefused
from berth.domain.workspace import Runtime, Workspace
from berth.wire import container_name

__all__ = ["AgentUrlPolicy", "parse_networks"]

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK: tuple[Net, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
# refused by default: link-local, and the metadata services of the big clouds
DANGEROUS: tuple[Net, ...] = (
    ipaddress.ip_network("169.254.0.0/16"),  # link-local; AWS, GCP, Azure metadata
    ipaddress.ip_network("fe80::/10"),  # IPv6 link-local
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("100.100.100.200/32"),  # Alibaba Cloud metadata
    ipaddress.ip_network("192.0.0.192/32"),  # Oracle Cloud metadata
    ipaddress.ip_network("0.0.0.0/8"),  # "this host" (reaches loopback services on Linux)
    ipaddress.ip_network("::/128"),
    ipaddress.ip_network("224.0.0.0/4"),  # multicast
    ipaddress.ip_network("ff00::/8"),
)
RESOLVE_TIMEOUT = 5.0


def parse_networks(value: str | None) -> list[Net]:
    out: list[Net] = []
    for part in (value or "").replace(" ", ",").split(","):
        if part:
            try:
                out.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"BERTH_AGENT_NETWORKS: {part!r} is not a CIDR range") from None
    return out


def _unmapped(addr: Addr) -> Addr:
    """::ffff:a.b.c.d is the IPv4 address a.b.c.d (and is judged as one)."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _own_containers(ws: Workspace) -> set[str]:
    """The serving version's container and, during a deploy, the other version's."""
    versions = {ws.version} | ({ws.peer.version} if ws.peer is not None else set())
    return {container_name(ws.id, v) for v in versions}


def _refused(why: str) -> UrlRefused:
    return UrlRefused(f"agent URL refused: {why}")


class AgentUrlPolicy:
    def __init__(self, networks: list[Net]) -> None:
        self.networks = networks

    def allows(self, addr: Addr) -> bool:
        addr = _unmapped(addr)
        if any(addr in n for n in LOOPBACK):
            return True
        named = [n for n in self.networks if n.version == addr.version and addr in n]
        for d in DANGEROUS:
            if d.version == addr.version and addr in d:
                # only a configured range inside the dangerous one lets it through
                return any(n.subnet_of(d) for n in named)  # type: ignore[arg-type]
        return bool(named)

    async def check(self, url: object, ws: Workspace | None = None) -> str:
        """The URL if berth may send to it; InvalidInput (400, agent_url_refused) if not."""
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise InvalidInput("url: an http(s) URL", code="invalid_input")
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError as e:
            raise _refused(f"{e}") from None
        if not host:
            raise _refused("it names no host")
        if parts.username is not None or parts.password is not None:
            raise _refused("credentials in the URL are not accepted")
        if ws is not None and ws.runtime is Runtime.DOCKER and host in _own_containers(ws):
            return url  # the workspace's own container, on berth's Docker network
        for addr in await self._addresses(host, port):
            if not self.allows(addr):
                return self._raise(host, _unmapped(addr))
        return url

    def _raise(self, host: str, addr: Addr) -> str:
        kind = (
            "a link-local or cloud metadata address"
            if any(addr.version == d.version and addr in d for d in DANGEROUS)
            else "outside loopback and BERTH_AGENT_NETWORKS"
        )
        shown = host if host == str(addr) else f"{host} ({addr})"
        raise _refused(f"{shown} is {kind}")

    @staticmethod
    async def _addresses(host: str, port: int | None) -> list[Addr]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
            )
        except (OSError, TimeoutError) as e:
            raise _refused(f"{host} cannot be resolved ({e})") from None
        addrs = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        if not addrs:
            raise _refused(f"{host} resolves to no address")
        return sorted(addrs, key=str)
