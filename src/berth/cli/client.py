"""Talking to berth's management API: one client, every failure mapped to an exit class."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import httpx

from berth.cli.errors import CliError, Exit
from berth.settings import ClientSettings

__all__ = ["Api", "connect"]

_BY_STATUS = {
    400: Exit.USAGE,
    401: Exit.AUTH,
    403: Exit.AUTH,
    404: Exit.NOT_FOUND,
    422: Exit.USAGE,
    503: Exit.UNREACHABLE,
}


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self._h = {"authorization": f"Bearer {token}"}
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=None))

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202),
    ) -> httpx.Response:
        try:
            r = self._client.request(
                method, self.url + path, json=body, headers={**self._h, **(headers or {})}
            )
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None
        if r.status_code not in ok:
            raise http_error(r)
        return r

    def json(self, method: str, path: str, body: Any = None) -> Any:
        return self.call(method, path, body).json()

    def get(self, path: str) -> Any:
        return self.json("GET", path)

    def stream_lines(self, path: str) -> Iterator[str]:
        """The lines of a streamed response (server-sent events), as they come."""
        try:
            with self._client.stream("GET", self.url + path, headers=self._h) as r:
                if r.status_code != 200:
                    r.read()
                    raise http_error(r)
                yield from r.iter_lines()
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None

    def _unreachable(self, e: Exception) -> CliError:
        return CliError(
            f"cannot reach berth at {self.url}: {e or e.__class__.__name__}",
            Exit.UNREACHABLE,
            hint="is `berth serve` running there? (--server / BERTH_SERVER)",
        )


def http_error(r: httpx.Response) -> CliError:
    code = _BY_STATUS.get(r.status_code, Exit.FAILED)
    try:
        err = r.json()["error"]
        message, kind = str(err["message"]), str(err["code"])
    except (ValueError, KeyError, TypeError):
        return CliError(f"HTTP {r.status_code}: {r.text[:300]}", code)
    hint = None
    if code is Exit.AUTH:
        hint = "check BERTH_ADMIN_TOKEN / --token, or --data-dir (where berth keeps admin_token)"
    return CliError(f"{message} ({kind})", code, hint=hint)


def connect(args: argparse.Namespace) -> Api:
    settings = ClientSettings.from_env(
        server=args.server, admin_token=args.token, data_dir=args.data_dir
    )
    token = settings.admin_token
    if not token and settings.token_file.exists():
        token = settings.token_file.read_text().strip()
    if not token:
        raise CliError(
            f"no admin token: set BERTH_ADMIN_TOKEN, pass --token, or point --data-dir at the "
            f"folder berth serves from (no {settings.token_file} here)",
            Exit.AUTH,
        )
    return Api(settings.server, token)
