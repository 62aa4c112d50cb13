"""The addresses a phone on the same network can reach this machine at (no packet is sent)."""

from __future__ import annotations

import ipaddress
import socket


def _routed_ipv4() -> str | None:
    """The IPv4 address of the interface the default route uses, or None without one.

    connect() on a UDP socket only picks a route and a source address; nothing is sent.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 9))
            return s.getsockname()[0]
        except OSError:
            return None


def _hostname_ipv4s() -> list[str]:
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return []
    return [info[4][0] for info in infos]


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses a LAN peer could use: routed one first, no loopback or link-local."""
    found = []
    for address in [_routed_ipv4(), *_hostname_ipv4s()]:
        if not address or address in found:
            continue
        ip = ipaddress.ip_address(address)
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified:
            continue
        found.append(address)
    return found


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_hosts(bind_host: str) -> list[str]:
    """The hosts to print in URLs for a server bound to `bind_host` (LAN addresses first)."""
    if bind_host in ("0.0.0.0", ""):
        return [*lan_addresses(), "localhost"]
    return [bind_host]
