"""The agent card as berth serves it: every interface berth proxies points at berth's URL
for that binding, any other interface (gRPC) is removed, the agent's security schemes are
replaced by berth's (callers authenticate to berth with a bearer token, and berth does not
pass their credentials on), and signatures over the agent's original card are dropped.

Caching: the agent's Cache-Control and Last-Modified pass through; the ETag is derived from
the agent's ETag (when it sent one) and the served bytes, so it changes whenever either
does; If-None-Match is answered with 304 (weak comparison, RFC 9110 13.1.2).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

__all__ = [
    "JSONRPC",
    "HTTP_JSON",
    "ServedCard",
    "card_etag",
    "etag_matches",
    "interfaces",
    "rest_url",
    "rewrite_card",
    "with_origin",
]

JSONRPC = "JSONRPC"
HTTP_JSON = "HTTP+JSON"
SCHEME = "berth"
PASSED_HEADERS = ("cache-control", "last-modified")


def _binding(value: Any) -> str:
    return str(value or JSONRPC).upper()


def interfaces(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(binding, url) of every interface a card declares, A2A 1.0 and 0.3 shapes."""
    out: list[tuple[str, str]] = []
    for iface in card.get("supportedInterfaces") or []:
        if isinstance(iface, dict) and isinstance(iface.get("url"), str):
            out.append((_binding(iface.get("protocolBinding")), iface["url"]))
    if isinstance(card.get("url"), str):
        out.append((_binding(card.get("preferredTransport")), card["url"]))
    for iface in card.get("additionalInterfaces") or []:
        if isinstance(iface, dict) and isinstance(iface.get("url"), str):
            out.append((_binding(iface.get("transport")), iface["url"]))
    return out


def rest_url(card: dict[str, Any] | None) -> str | None:
    """The agent's HTTP+JSON URL from its card, if it declares one."""
    for binding, url in interfaces(card or {}):
        if binding == HTTP_JSON:
            return url
    return None


def with_origin(url: str, origin_of: str) -> str:
    """`url`'s path on the scheme and host of `origin_of` (berth reaches the agent at the
    address it registered, which may differ from the one its card advertises)."""
    u, o = urlsplit(url), urlsplit(origin_of)
    return urlunsplit((o.scheme, o.netloc, u.path, u.query, ""))


def _security(card: dict[str, Any], v1: bool) -> None:
    desc = "berth's admin token or a caller credential the workspace allows"
    if v1:
        card["securitySchemes"] = {
            SCHEME: {"httpAuthSecurityScheme": {"scheme": "Bearer", "description": desc}}
        }
        card["securityRequirements"] = [{"schemes": {SCHEME: {"list": []}}}]
        card.pop("security", None)
    else:
        card["securitySchemes"] = {
            SCHEME: {"type": "http", "scheme": "bearer", "description": desc}
        }
        card["security"] = [{SCHEME: []}]


def rewrite_card(src: dict[str, Any], urls: dict[str, str]) -> dict[str, Any]:
    """The card a caller gets; `urls` maps a binding (JSONRPC, HTTP+JSON) to berth's URL."""
    out = copy.deepcopy(src)
    v1 = "supportedInterfaces" in out or "url" not in out
    if "supportedInterfaces" in out or "url" not in out:
        kept = []
        for iface in out.get("supportedInterfaces") or []:
            if not isinstance(iface, dict):
                continue
            target = urls.get(_binding(iface.get("protocolBinding")))
            if target is not None:
                kept.append({**iface, "url": target})
        if not kept and "supportedInterfaces" not in src:
            kept = [{"url": urls[JSONRPC], "protocolBinding": JSONRPC, "protocolVersion": "1.0"}]
        out["supportedInterfaces"] = kept
    if "url" in out:  # A2A 0.3: a main url (preferredTransport) and additionalInterfaces
        extra = []
        for iface in out.get("additionalInterfaces") or []:
            if isinstance(iface, dict) and _binding(iface.get("transport")) in urls:
                extra.append({**iface, "url": urls[_binding(iface.get("transport"))]})
        preferred = _binding(out.get("preferredTransport"))
        if preferred not in urls:  # gRPC first: the first interface berth proxies instead
            preferred = extra[0]["transport"] if extra else JSONRPC
            out["preferredTransport"] = preferred
        out["url"] = urls[_binding(preferred)]
        if "additionalInterfaces" in out:
            out["additionalInterfaces"] = extra
    out.pop("signatures", None)  # they signed the agent's card, not this one
    _security(out, v1)
    return out


def card_etag(body: bytes, agent_etag: str | None) -> str:
    digest = hashlib.sha256(body)
    if agent_etag:
        digest.update(agent_etag.encode())
    tag = f'"{digest.hexdigest()[:32]}"'
    return f"W/{tag}" if agent_etag and agent_etag.startswith("W/") else tag


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip() for c in if_none_match.split(",")]
    return "*" in candidates or any(
        c.removeprefix("W/") == etag.removeprefix("W/") for c in candidates
    )


@dataclass
class ServedCard:
    body: bytes
    headers: dict[str, str]  # ETag and the agent's caching headers
    not_modified: bool = False

    @classmethod
    def build(
        cls, card: dict[str, Any], agent_headers: dict[str, str], if_none_match: str | None
    ) -> ServedCard:
        body = orjson.dumps(card)
        headers = {k: v for k, v in agent_headers.items() if k in PASSED_HEADERS}
        headers["etag"] = card_etag(body, agent_headers.get("etag"))
        return cls(body, headers, etag_matches(if_none_match, headers["etag"]))
