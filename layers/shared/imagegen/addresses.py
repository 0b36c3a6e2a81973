"""Which IP addresses the service may connect to when it fetches a URL it was given (images, webhooks).

Standard library only: the settings validate ``*_ALLOWED_PRIVATE_NETWORKS`` with it without importing requests.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

# IPv6 ranges that embed an IPv4 address a translator or relay would reach: NAT64 (RFC 6052, RFC 8215),
# 6to4 (RFC 3056) and the deprecated IPv4-compatible form. Refused outright: no image host needs them.
_IPV4_EMBEDDING_NETWORKS = tuple(
    ipaddress.ip_network(network) for network in ("64:ff9b::/96", "64:ff9b:1::/48", "2002::/16", "::/96")
)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings ("127.0.0.0/8", "::1/128") to networks; a ValueError names the bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (CIDR, e.g. 127.0.0.0/8)") from None
    return tuple(networks)


def is_public_address(address: str, also_allowed: tuple[Network, ...] = ()) -> bool:
    """A global unicast address, or one in ``also_allowed`` (the local stack's loopback, never in a deployment)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in network for network in also_allowed):
        return True
    if isinstance(ip, ipaddress.IPv6Address) and any(ip in network for network in _IPV4_EMBEDDING_NETWORKS):
        return False
    return ip.is_global and not ip.is_multicast
