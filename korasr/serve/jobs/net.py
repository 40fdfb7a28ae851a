"""Where the service may reach out to, for a job's ``url`` source or its callback: only URLs under a prefix the
operator allows, and never an address that is not globally routable (loopback, private, link-local: the cloud
metadata service at 169.254.169.254, shared, reserved) unless the prefix itself names that address (an IP literal,
or ``localhost`` for loopback). A name that resolves to such an address is refused whatever the prefix, so a
public-looking host cannot point the server at its own network. The address checked is the address connected to
(:meth:`Target.request`): the name is not resolved a second time, so DNS cannot change the answer in between.

IPv6 forms that carry an IPv4 address (NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``, IPv4-mapped ``::ffff:0:0/96``,
IPv4-translated ``::ffff:0:0:0/96``, IPv4-compatible ``::/96``, 6to4 ``2002::/16``) count as not global: a translator
would take the server to the IPv4 address inside, which may be private. A backslash anywhere in a URL (or ``%5C`` in
its path) is refused: servers and proxies that read it as ``/`` would see another path than the prefix check did."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

import httpx

RESOLVE_TIMEOUT_S = 5.0
MAX_URL = 2000
DEFAULT_PORTS = {"http": 80, "https": 443}
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
CARRY_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0/96",
                                                       "::ffff:0:0:0/96", "::/96", "2002::/16"))  # fmt: skip


class Refused(Exception):
    """A URL the server will not reach: ``status`` (400 malformed, 403 not allowed) and the reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def parse(url: str, what: str) -> httpx.URL:
    """An absolute http(s) URL with a host, no user name or password and no ``..`` segment; else Refused(400)."""
    if len(url) > MAX_URL:
        raise Refused(400, f"{what}: longer than {MAX_URL} characters")
    if "\\" in url:
        raise Refused(400, f"{what} {url[:100]!r}: a backslash in a URL is not allowed")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as e:
        raise Refused(400, f"{what} {url[:100]!r}: not a URL ({e})") from None
    if parsed.scheme not in DEFAULT_PORTS or not parsed.host:
        raise Refused(400, f"{what} {url[:100]!r}: an http:// or https:// URL with a host")
    if parsed.userinfo:
        raise Refused(400, f"{what} {url[:100]!r}: a user name or password in the URL is not allowed")
    if ".." in parsed.path.split("/") or "%5c" in parsed.raw_path.decode("ascii", "replace").lower():
        raise Refused(400, f"{what} {url[:100]!r}: '..' or an encoded backslash in the path")
    return parsed


def check_prefix(prefix: str) -> str:
    """Why ``prefix`` cannot be an allowed URL prefix ('' when it can): for the config's validation."""
    try:
        parsed = parse(prefix, "prefix")
    except Refused as e:
        return e.reason.split(": ", 1)[-1]
    return "a prefix has no query or fragment" if parsed.query or parsed.fragment else ""


def port(url: httpx.URL) -> int:
    return url.port or DEFAULT_PORTS[url.scheme]


def under(url: httpx.URL, prefix: httpx.URL) -> bool:
    """``url`` lies under ``prefix``: the same scheme, host and port, and the prefix's path as whole segments."""
    if (url.scheme, url.host, port(url)) != (prefix.scheme, prefix.host, port(prefix)):
        return False
    path, base = url.path or "/", prefix.path or "/"
    return path.startswith(base) if base.endswith("/") else path == base or path.startswith(base + "/")


def address(text: str) -> Address | None:
    """The IP address ``text`` is (an IPv4-mapped IPv6 address as its IPv4 address), or None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def named_by(prefix: httpx.URL, ip: Address) -> bool:
    """A non-global address is reachable only when the prefix names it: as its IP literal, or loopback as
    ``localhost``."""
    if (literal := address(prefix.host)) is not None:
        return literal == ip
    return prefix.host.rstrip(".") == "localhost" and ip.is_loopback


def reachable(ip: Address) -> bool:
    return ip.is_global and not ip.is_multicast and not any(ip in network for network in CARRY_IPV4)


@dataclass(frozen=True)
class Target:
    """An allowed URL and the checked address to connect to."""

    url: httpx.URL
    ip: Address

    def request(self) -> tuple[httpx.URL, dict[str, str], dict]:
        """URL, headers and httpx extensions of a request to ``ip`` that the server still sees as ``url`` (its
        Host header, and for https the name the certificate is checked against)."""
        pinned = self.url.copy_with(host=str(self.ip))
        extensions = {"sni_hostname": self.url.raw_host.decode("ascii")} if self.url.scheme == "https" else {}
        return pinned, {"Host": self.url.netloc.decode("ascii")}, extensions


async def resolve(url: str, prefixes: tuple[str, ...], what: str, option: str) -> Target:
    """The :class:`Target` of ``url`` when it lies under one of ``prefixes`` (those that are URLs) and every address
    its host resolves to may be reached; Refused (400 or 403, with the reason) otherwise."""
    parsed = parse(url, what)
    urls = [httpx.URL(p) for p in prefixes if p.startswith(tuple(f"{scheme}://" for scheme in DEFAULT_PORTS))]
    prefix = next((p for p in urls if under(parsed, p)), None)
    if prefix is None:
        raise Refused(403, f"{what} {url[:100]!r} is not under an allowed prefix ({option})")
    ips = [ip] if (ip := address(parsed.host)) is not None else await lookup(parsed.host, port(parsed), what)
    for ip in ips:
        if not reachable(ip) and not named_by(prefix, ip):
            raise Refused(403, f"{what} {url[:100]!r}: {parsed.host} is {ip}, a loopback, private, link-local or "
                          f"reserved address (reachable only when the allowed prefix names it: {option} "
                          f"{parsed.scheme}://{ip}…)")  # fmt: skip
    return Target(parsed, ips[0])


async def lookup(host: str, port_number: int, what: str) -> list[Address]:
    """Every address ``host`` resolves to, within RESOLVE_TIMEOUT_S."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port_number, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise Refused(400, f"{what}: cannot resolve {host[:100]} ({e or 'timed out'})") from None
    ips = [ip for info in infos if (ip := address(str(info[4][0]))) is not None]
    if not ips:
        raise Refused(400, f"{what}: {host[:100]} has no address")
    return ips
