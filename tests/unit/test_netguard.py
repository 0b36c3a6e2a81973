"""The network guard (imagegen.adapters.netguard): URL checks, public-only connections, redirects followed by hand,
and its neutral refusals (how the mirror and webhooks word them: test_mirror.py, test_webhooks.py)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import requests
from imagegen.adapters.netguard import (
    AddressRefusedError,
    Refusal,
    RefusedError,
    UrlGuard,
    get_following_redirects,
    guarded_session,
)
from imagegen.addresses import is_public_address, parse_networks

R2_GUARD = UrlGuard(("pub-*.r2.dev",))
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def _assert_neutral(error: RefusedError) -> None:
    """The guard's own text names neither of its callers: each words the refusal itself."""
    assert str(error) and "image" not in str(error).lower() and "webhook" not in str(error).lower()


# ---------------------------------------------------------------------------------------------------- UrlGuard
@pytest.mark.parametrize(
    "url",
    [
        "https://pub-582b7213209642b9b995c96c95a30381.r2.dev/flux-schnell-cf/prompt-1.png",
        "HTTPS://PUB-ABC.R2.DEV/x.png",
        "https://pub-abc.r2.dev./x.png",
        "https://pub-abc.r2.dev:443/x.png?sig=1#frag",
    ],
    ids=["vendor", "upper-case", "trailing-dot", "port-query"],
)
def test_url_guard_allows_https_on_allowlisted_host(url: str) -> None:
    R2_GUARD.check(url)  # Given an https URL on an allowlisted host, When checked, Then nothing is raised


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://pub-abc.r2.dev/x.png", Refusal.SCHEME),
        ("ftp://pub-abc.r2.dev/x.png", Refusal.SCHEME),
        ("file:///etc/passwd", Refusal.SCHEME),
        ("//pub-abc.r2.dev/x.png", Refusal.SCHEME),
        ("pub-abc.r2.dev/x.png", Refusal.SCHEME),
        ("https:///x.png", Refusal.NO_HOST),
        ("https://user:pw@pub-abc.r2.dev/x.png", Refusal.CREDENTIALS),
        ("https://user@pub-abc.r2.dev/x.png", Refusal.CREDENTIALS),
        ("https://evil.example\\@pub-abc.r2.dev/x.png", Refusal.CREDENTIALS),
        ("https://evil.example/x.png", Refusal.HOST_NOT_ALLOWED),
        ("https://pub-abc.r2.dev.evil.example/x.png", Refusal.HOST_NOT_ALLOWED),
        ("https://x.pub-abc.r2.dev/x.png", Refusal.HOST_NOT_ALLOWED),
        ("https://r2.dev/x.png", Refusal.HOST_NOT_ALLOWED),
        ("https://169.254.169.254/latest/meta-data/", Refusal.HOST_NOT_ALLOWED),
        ("https://pub-abc.r2.dev@evil.example/x.png", Refusal.CREDENTIALS),
    ],
)
def test_url_guard_refuses_bad_scheme_host_or_credentials(url: str, reason: Refusal) -> None:
    # Given a URL that must not be fetched, When checked, Then it is refused with that reason, in neutral words
    with pytest.raises(RefusedError) as caught:
        R2_GUARD.check(url)
    assert caught.value.reason == reason
    assert not isinstance(caught.value, OSError)  # urllib3 would retry an OSError
    _assert_neutral(caught.value)


def test_url_guard_allows_http_only_when_configured() -> None:
    local = UrlGuard(("127.0.0.1", "localhost"), allow_http=True)
    local.check("http://127.0.0.1:8080/x.png")
    local.check("https://localhost/x.png")
    with pytest.raises(RefusedError) as scheme:
        local.check("ftp://127.0.0.1/x.png")
    with pytest.raises(RefusedError) as host:
        local.check("http://127.0.0.2/x.png")
    assert (scheme.value.reason, scheme.value.value, str(scheme.value)) == (
        Refusal.SCHEME,
        "ftp",
        "URL scheme 'ftp' is not allowed (https only)",
    )
    assert (host.value.reason, host.value.value, str(host.value)) == (
        Refusal.HOST_NOT_ALLOWED,
        "127.0.0.2",
        "host '127.0.0.2' is not on the allowlist",
    )


# ---------------------------------------------------------------------------------------------------- addresses
@pytest.mark.parametrize(
    "address",
    [
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.254",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.251",
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "febf:ffff::1",
        "fd00:ec2::254",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "ff02::1",
    ],
)
def test_is_public_address_refuses_private_loopback_link_local_and_shared(address: str) -> None:
    assert is_public_address(address) is False


@pytest.mark.parametrize(
    "address",
    ["8.8.8.8", "1.1.1.1", "104.18.2.3", "172.32.0.1", "100.128.0.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"],
)
def test_is_public_address_accepts_public(address: str) -> None:
    assert is_public_address(address) is True


# ---------------------------------------------------------------------------------------------------- PublicOnlyAdapter
def test_public_only_adapter_refuses_loopback_without_connecting(http_server: Any) -> None:
    # Given a live server on 127.0.0.1 and the production (public-only) session
    session = guarded_session()
    # When the guarded session asks for it
    with pytest.raises(AddressRefusedError, match="non-public"):
        session.get(http_server.url("/image.png"), timeout=2)
    # Then no connection was made: a later plain request is the first and only one the server ever accepted
    http_server.reply(200, b"ok")
    plain = requests.Session()
    plain.trust_env = False
    assert plain.get(http_server.url("/probe"), timeout=2).content == b"ok"
    assert http_server.connections == 1
    assert [request.path for request in http_server.received] == ["/probe"]


def test_public_only_adapter_refuses_localhost_name(http_server: Any) -> None:
    with pytest.raises(AddressRefusedError):
        guarded_session().get(f"http://localhost:{http_server.port}/x.png", timeout=2)
    assert http_server.received == []


def test_guarded_session_allowing_loopback_reaches_loopback(http_server: Any) -> None:
    http_server.reply(200, b"ok")
    session = guarded_session(["127.0.0.0/8", "::1/128"])
    assert session.trust_env is False  # no proxy or .netrc from the environment
    assert session.get(http_server.url("/x"), timeout=2).content == b"ok"


@pytest.mark.parametrize("address", ["169.254.169.254", "10.0.0.1", "192.168.1.1", "fd00:ec2::254", "::ffff:10.1.1.1"])
def test_allowing_loopback_still_refuses_metadata_and_private_networks(address: str) -> None:
    # The local stack's allowance is loopback only: the cloud metadata service and LANs stay out of reach
    loopback = parse_networks(["127.0.0.0/8", "::1/128"])
    assert is_public_address(address, loopback) is False
    assert is_public_address("127.0.0.1", loopback) is True
    assert is_public_address("::ffff:127.0.0.1", loopback) is True


def test_allowing_loopback_refuses_a_link_local_connection(resolve_to: Any) -> None:
    # Given the local stack's session and a host that resolves to the metadata service
    recorder = resolve_to("169.254.169.254", error=OSError("must not connect"))
    # When it is fetched, then it is refused before any connection
    with pytest.raises(AddressRefusedError, match="non-public"):
        guarded_session(["127.0.0.0/8", "::1/128"]).get("http://images.example.com/x.png", timeout=2)
    assert recorder.addresses == []


def test_parse_networks_names_a_bad_entry() -> None:
    with pytest.raises(ValueError, match="'localhost' is not an IP network"):
        parse_networks(["127.0.0.0/8", "localhost"])


def test_public_only_adapter_connects_only_to_the_checked_public_address(resolve_to: Any) -> None:
    # Given a name resolving to private and public addresses
    recorder = resolve_to("10.0.0.5", "127.0.0.1", "93.184.216.34", "fd00::1")
    # When the guarded session connects
    with pytest.raises(requests.exceptions.ConnectionError):
        guarded_session().get("https://pub-mixed.r2.dev/x.png", timeout=2)
    # Then only the public address was tried
    assert {address for address, _ in recorder.addresses} == {"93.184.216.34"}


@pytest.mark.parametrize(
    "address",
    ["64:ff9b::a9fe:a9fe", "64:ff9b:1::a00:1", "2002:a9fe:a9fe::1", "::127.0.0.1", "::a9fe:a9fe"],
)
def test_is_public_address_refuses_ipv6_forms_that_embed_ipv4(address: str) -> None:
    # NAT64, 6to4 and IPv4-compatible addresses can reach private IPv4 space through a translator
    assert is_public_address(address) is False


# ---------------------------------------------------------------------------------------------------- neutral refusals
def test_address_refusals_are_neutral_with_the_host_as_value(http_server: Any) -> None:
    with pytest.raises(AddressRefusedError) as caught:
        guarded_session().get(http_server.url("/images/x.png"), timeout=2)
    assert (caught.value.reason, caught.value.value) == (Refusal.NON_PUBLIC_ADDRESS, "127.0.0.1")
    assert str(caught.value) == "host '127.0.0.1' resolves to a non-public address"
    assert isinstance(caught.value, RefusedError) and not isinstance(caught.value, OSError)
    _assert_neutral(caught.value)


def test_an_unresolvable_host_is_refused_neutrally(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_host(*args: Any, **kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_host)
    with pytest.raises(AddressRefusedError) as caught:
        guarded_session().get("https://images.example.com/x.png", timeout=2)
    assert (caught.value.reason, caught.value.value) == (Refusal.UNRESOLVABLE, "images.example.com")
    assert str(caught.value) == "host 'images.example.com' does not resolve"


# ---------------------------------------------------------------------------------------------------- redirects
LOCAL_GUARD = UrlGuard(("127.0.0.1",), allow_http=True)
HEADERS = {"Accept": "text/plain"}


def _timeouts() -> tuple[float, float]:
    return 2.0, 2.0


def test_get_following_redirects_checks_and_follows_each_hop(http_server: Any) -> None:
    # Given two redirects on the allowed host, then an answer
    http_server.reply(302, b"", {"Location": "/second"}).reply(307, b"", {"Location": "/third"}).reply(200, b"ok")
    hops: list[str] = []

    class Recording(UrlGuard):
        def check(self, url: str) -> None:
            hops.append(url)
            super().check(url)

    guard = Recording(("127.0.0.1",), allow_http=True)
    # When fetched
    with get_following_redirects(
        guarded_session(LOOPBACK), http_server.url("/first"), guard, timeout=_timeouts, headers=HEADERS
    ) as response:
        body = response.content
    # Then every hop was checked before it was fetched, with the caller's headers, and the last answer is returned
    assert (response.status_code, body) == (200, b"ok")
    assert [request.path for request in http_server.received] == ["/first", "/second", "/third"]
    assert hops == [http_server.url(path) for path in ("/first", "/second", "/third")]
    assert all(request.headers["Accept"] == "text/plain" for request in http_server.received)


def test_get_following_redirects_returns_a_non_200_for_the_caller(http_server: Any) -> None:
    http_server.reply(404, b"missing")
    with get_following_redirects(
        guarded_session(LOOPBACK), http_server.url("/x"), LOCAL_GUARD, timeout=_timeouts, headers=HEADERS
    ) as response:
        assert response.status_code == 404


def test_get_following_redirects_refuses_a_hop_off_the_allowlist_before_fetching_it(http_server: Any) -> None:
    http_server.reply(301, b"", {"Location": "http://evil.example/x"})
    with pytest.raises(RefusedError) as caught:
        get_following_redirects(
            guarded_session(LOOPBACK), http_server.url("/x"), LOCAL_GUARD, timeout=_timeouts, headers=HEADERS
        )
    assert (caught.value.reason, caught.value.value) == (Refusal.HOST_NOT_ALLOWED, "evil.example")
    assert len(http_server.received) == 1


def test_get_following_redirects_stops_after_the_limit(http_server: Any) -> None:
    for index in range(4):
        http_server.reply(302, b"", {"Location": f"/hop{index}"})
    with pytest.raises(RefusedError) as caught:
        get_following_redirects(
            guarded_session(LOOPBACK),
            http_server.url("/start"),
            LOCAL_GUARD,
            timeout=_timeouts,
            headers=HEADERS,
            max_redirects=2,
        )
    assert (caught.value.reason, caught.value.value, str(caught.value)) == (
        Refusal.TOO_MANY_REDIRECTS,
        "2",
        "more than 2 redirects",
    )
    assert len(http_server.received) == 3  # the first request and two redirects


def test_get_following_redirects_asks_for_each_hops_timeouts_and_stops_when_they_raise(http_server: Any) -> None:
    # Given a redirect, and a caller whose budget runs out after the first hop
    http_server.reply(302, b"", {"Location": "/next"}).reply(200, b"ok")
    asked: list[int] = []

    class BudgetSpent(Exception):
        pass

    def timeouts() -> tuple[float, float]:
        asked.append(len(http_server.received))
        if len(asked) > 1:
            raise BudgetSpent
        return 2.0, 2.0

    # When fetched, Then the second hop is not requested
    with pytest.raises(BudgetSpent):
        get_following_redirects(
            guarded_session(LOOPBACK), http_server.url("/x"), LOCAL_GUARD, timeout=timeouts, headers=HEADERS
        )
    assert asked == [0, 1] and [request.path for request in http_server.received] == ["/x"]


def test_the_fake_resolution_leaves_other_threads_alone(resolve_to: Any, http_server: Any) -> None:
    # Given the fake resolution and connection recorder installed for this test's thread
    import threading

    recorder = resolve_to("10.0.0.7")
    http_server.reply(200, "ok")
    answers: list[int] = []

    # When another thread (under xdist, a local stack's poller from an earlier test) connects to a loopback server
    def other() -> None:
        answers.append(requests.get(http_server.url("/x"), timeout=5).status_code)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=10)

    # Then it connected for real, and the recorder saw only this thread's connections (none)
    assert answers == [200]
    assert recorder.addresses == []
    # and this thread's connections are still recorded instead of made
    with pytest.raises(requests.ConnectionError):
        requests.get("http://anything.example/", timeout=5)
    assert recorder.addresses == [("anything.example", 80)]
