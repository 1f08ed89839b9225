"""The card berth serves (issue 11): interfaces per binding, gRPC removed, berth's
security scheme, signatures dropped, ETag and If-None-Match; A2A 1.0 and 0.3 shapes."""

from __future__ import annotations

from typing import Any

from berth.services.card import (
    ServedCard,
    card_etag,
    etag_matches,
    rest_url,
    rewrite_card,
    with_origin,
)

URLS = {
    "JSONRPC": "https://b/v1/workspaces/w/a2a",
    "HTTP+JSON": "https://b/v1/workspaces/w/a2a/rest",
}


def v1_card() -> dict[str, Any]:
    return {
        "name": "a",
        "supportedInterfaces": [
            {"url": "http://x:1/", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": "http://x:1/rest", "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
            {"url": "x:50051", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
        ],
        "securitySchemes": {"theirs": {"apiKeySecurityScheme": {"name": "k"}}},
        "securityRequirements": [{"schemes": {"theirs": {"list": []}}}],
        "signatures": [{"protected": "x", "signature": "y"}],
    }


def test_v1_interfaces_map_per_binding_and_grpc_goes() -> None:
    out = rewrite_card(v1_card(), URLS)
    assert [(i["protocolBinding"], i["url"]) for i in out["supportedInterfaces"]] == [
        ("JSONRPC", URLS["JSONRPC"]),
        ("HTTP+JSON", URLS["HTTP+JSON"]),
    ]
    assert out["securitySchemes"] == {
        "berth": {
            "httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "description": "berth's admin token or a caller credential the workspace allows",
            }
        }
    }
    assert out["securityRequirements"] == [{"schemes": {"berth": {"list": []}}}]
    assert "signatures" not in out and "security" not in out
    assert v1_card()["supportedInterfaces"][0]["url"] == "http://x:1/"  # the source is untouched


def test_v1_card_with_only_grpc_keeps_no_interface() -> None:
    card = {"supportedInterfaces": [{"url": "x:1", "protocolBinding": "GRPC"}]}
    assert rewrite_card(card, URLS)["supportedInterfaces"] == []


def test_v03_card_main_url_and_additional_interfaces() -> None:
    card = {
        "protocolVersion": "0.3.0",
        "url": "http://x:1/",
        "preferredTransport": "JSONRPC",
        "additionalInterfaces": [
            {"url": "http://x:1/", "transport": "JSONRPC"},
            {"url": "http://x:1/rest", "transport": "HTTP+JSON"},
            {"url": "x:2", "transport": "GRPC"},
        ],
    }
    out = rewrite_card(card, URLS)
    assert out["url"] == URLS["JSONRPC"]
    assert out["additionalInterfaces"] == [
        {"url": URLS["JSONRPC"], "transport": "JSONRPC"},
        {"url": URLS["HTTP+JSON"], "transport": "HTTP+JSON"},
    ]
    assert out["securitySchemes"] == {
        "berth": {
            "type": "http",
            "scheme": "bearer",
            "description": "berth's admin token or a caller credential the workspace allows",
        }
    }
    assert out["security"] == [{"berth": []}]
    assert "supportedInterfaces" not in out


def test_v03_card_preferring_grpc_falls_back_to_a_proxied_interface() -> None:
    card = {
        "url": "x:2",
        "preferredTransport": "GRPC",
        "additionalInterfaces": [{"url": "http://x:1/rest", "transport": "HTTP+JSON"}],
    }
    out = rewrite_card(card, URLS)
    assert (out["preferredTransport"], out["url"]) == ("HTTP+JSON", URLS["HTTP+JSON"])


def test_rest_url_and_origin() -> None:
    assert rest_url(v1_card()) == "http://x:1/rest"
    assert rest_url({"supportedInterfaces": []}) is None
    assert rest_url(None) is None
    assert with_origin("http://public.example/a2a/rest", "http://127.0.0.1:9/") == (
        "http://127.0.0.1:9/a2a/rest"
    )


def test_etag_changes_with_the_body_and_the_agents_tag() -> None:
    a = card_etag(b"{}", None)
    assert a.startswith('"') and a != card_etag(b"{ }", None)
    assert card_etag(b"{}", '"1"') != card_etag(b"{}", '"2"')
    assert card_etag(b"{}", 'W/"1"').startswith('W/"')


def test_if_none_match_uses_weak_comparison() -> None:
    tag = 'W/"abc"'
    assert etag_matches('"abc"', tag)
    assert etag_matches('"x", W/"abc"', tag)
    assert etag_matches("*", tag)
    assert not etag_matches('"abd"', tag)
    assert not etag_matches(None, tag)
    assert not etag_matches("", tag)


def test_served_card_passes_the_agents_caching_headers_only() -> None:
    agent = {
        "cache-control": "public, max-age=60",
        "last-modified": "Wed, 02 Dec 2026 10:00:00 GMT",
        "etag": '"1"',
        "set-cookie": "x=1",
        "content-length": "2",
    }
    first = ServedCard.build({"a": 1}, agent, None)
    assert set(first.headers) == {"cache-control", "last-modified", "etag"}
    assert not first.not_modified
    assert ServedCard.build({"a": 1}, agent, first.headers["etag"]).not_modified
    assert not ServedCard.build({"a": 2}, agent, first.headers["etag"]).not_modified
