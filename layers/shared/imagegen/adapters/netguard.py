"""The network guard: which URLs the service may fetch when it was handed them (an image, a webhook), and connections
that can only reach public addresses.

What lives here:
- ``UrlGuard``: scheme (https; http only when the local stack allows it), a host, no credentials in the URL, the
  host on an allowlist (shell-style patterns);
- ``guarded_session``: a ``requests`` session whose sockets connect only to public addresses. The check runs on the
  address the socket actually connects to, so DNS rebinding between check and connect is impossible. The local
  stack adds loopback (``allowed_private_networks``); link-local (cloud metadata), RFC 1918 and the rest stay
  refused;
- ``get_following_redirects``: a streamed GET that follows redirects by hand, each hop checked by the guard before
  it is fetched;
- the refusals, as neutral errors: a ``Refusal`` code, the value refused, and a sentence that names neither an
  image nor a webhook. Each caller words them for its own users (``adapters/mirror.py``, ``adapters/webhooks.py``).

What does not: which addresses count as public (``imagegen.addresses``, standard library only, so the settings can
validate networks without importing requests); reading a body within a size and time budget
(``adapters/http.py``); what a caller does with a refusal (the mirror raises ``image_rejected``, a webhook is
reported undelivered).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import connection as urllib3_connection

from imagegen.addresses import Network, is_public_address, parse_networks

MAX_REDIRECTS = 3


# ---------------------------------------------------------------------------------------------------- refusals
class Refusal(StrEnum):
    """Why the guard refused a URL or a connection."""

    SCHEME = "scheme_not_allowed"  # value: the scheme ("" when the URL has none)
    NO_HOST = "no_host"
    CREDENTIALS = "credentials_in_url"
    HOST_NOT_ALLOWED = "host_not_allowed"  # value: the host
    UNRESOLVABLE = "host_does_not_resolve"  # value: the host
    NON_PUBLIC_ADDRESS = "non_public_address"  # value: the host
    TOO_MANY_REDIRECTS = "too_many_redirects"  # value: the limit


class RefusedError(Exception):
    """The guard refused a URL, a hop or a connection: ``reason`` says why, ``value`` is what was refused (a scheme,
    a host, a limit). Its text is neutral; callers word it for their users from ``reason`` and ``value``."""

    def __init__(self, reason: Refusal, text: str, value: str = "") -> None:
        super().__init__(text)
        self.reason = reason
        self.value = value


class AddressRefusedError(RefusedError):
    """A host did not resolve, or resolved only to non-public addresses. Raised from inside the connection, before
    any socket is opened. Deliberately not an OSError: urllib3 must not retry it (requests lets it through as is)."""


# ---------------------------------------------------------------------------------------------------- URL check
@dataclass(frozen=True)
class UrlGuard:
    host_allowlist: tuple[str, ...]
    allow_http: bool = False

    def check(self, url: str) -> None:
        """Refuse (RefusedError) a URL that is not https (or http when allowed), has no host, carries credentials,
        or whose host matches no pattern of the allowlist. Addresses are checked when connecting, not here."""
        parts = urlsplit(url)
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            shown = parts.scheme or "(none)"
            raise RefusedError(Refusal.SCHEME, f"URL scheme {shown!r} is not allowed (https only)", parts.scheme)
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise RefusedError(Refusal.NO_HOST, "URL has no host")
        if parts.username or parts.password:
            raise RefusedError(Refusal.CREDENTIALS, "URL must not carry credentials")
        if not any(fnmatchcase(host, pattern.lower()) for pattern in self.host_allowlist):
            raise RefusedError(Refusal.HOST_NOT_ALLOWED, f"host {host!r} is not on the allowlist", host)


# ---------------------------------------------------------------------------------------------------- connections
class _PublicOnlyConnectionMixin:
    """Connect only to public addresses: resolve, filter, and connect to the address that was checked."""

    allowed_networks: tuple[Network, ...] = ()
    _dns_host: str
    host: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any

    def _new_conn(self) -> socket.socket:
        try:
            infos = socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise AddressRefusedError(Refusal.UNRESOLVABLE, f"host {self.host!r} does not resolve", self.host) from exc
        addresses = [str(info[4][0]) for info in infos]  # an IPv4 or IPv6 address: always a str here
        public = [address for address in addresses if is_public_address(address, self.allowed_networks)]
        if not public:
            raise AddressRefusedError(
                Refusal.NON_PUBLIC_ADDRESS, f"host {self.host!r} resolves to a non-public address", self.host
            )
        last_error: OSError | None = None
        for address in public:
            try:
                return urllib3_connection.create_connection(
                    (address, self.port), self.timeout, self.source_address, self.socket_options
                )
            except OSError as exc:
                last_error = exc
        assert last_error is not None
        raise last_error


class _PublicHTTPConnection(_PublicOnlyConnectionMixin, HTTPConnection):
    pass


class _PublicHTTPSConnection(_PublicOnlyConnectionMixin, HTTPSConnection):
    pass


def _pool_class(base: type[HTTPConnectionPool], connection: type[Any], allowed: tuple[Network, ...]) -> type[Any]:
    """A pool whose connections also accept ``allowed`` (a subclass: urllib3 pools take no per-pool setting)."""
    bound = type(connection.__name__, (connection,), {"allowed_networks": allowed})
    return type(f"Public{base.__name__}", (base,), {"ConnectionCls": bound})


class PublicOnlyAdapter(HTTPAdapter):
    """A requests adapter whose connections can only reach public IP addresses (and ``allowed_networks``)."""

    def __init__(self, allowed_networks: tuple[Network, ...] = (), **kwargs: Any) -> None:
        self._pool_classes = {
            "http": _pool_class(HTTPConnectionPool, _PublicHTTPConnection, allowed_networks),
            "https": _pool_class(HTTPSConnectionPool, _PublicHTTPSConnection, allowed_networks),
        }
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self._pool_classes)


def guarded_session(allowed_private_networks: Iterable[str] = ()) -> requests.Session:
    """A session that connects only to public addresses, checked on the socket it opens. The local stack adds
    loopback (``allowed_private_networks``); link-local (cloud metadata), RFC 1918 and the rest stay refused."""
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment for fetching content we were handed
    adapter = PublicOnlyAdapter(parse_networks(allowed_private_networks))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


# ---------------------------------------------------------------------------------------------------- redirects
def get_following_redirects(
    session: requests.Session,
    url: str,
    guard: UrlGuard,
    *,
    timeout: Callable[[], tuple[float, float]],
    headers: Mapping[str, str],
    max_redirects: int = MAX_REDIRECTS,
) -> requests.Response:
    """GET ``url`` streamed, following at most ``max_redirects`` redirects by hand: every hop (the first URL too)
    is checked by ``guard`` before it is fetched, and ``timeout()`` gives each hop its (connect, read) timeouts
    (it may raise to stop, e.g. when the caller's budget is spent). Returns the first answer that is not a
    redirect, whatever its status, for the caller to close. Raises RefusedError (a hop refused, an address refused,
    too many redirects) and requests' own exceptions as they are."""
    for _ in range(max_redirects + 1):
        guard.check(url)
        response = session.get(url, stream=True, allow_redirects=False, timeout=timeout(), headers=dict(headers))
        if not response.is_redirect:
            return response
        location = response.headers.get("Location", "")
        response.close()
        url = urljoin(url, location)
    raise RefusedError(Refusal.TOO_MANY_REDIRECTS, f"more than {max_redirects} redirects", str(max_redirects))
