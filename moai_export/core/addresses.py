"""Where a server is, read one way everywhere: `HOST:PORT` (an IPv6 host in brackets,
`[::1]:8001`), `http://HOST:PORT` and `grpc://HOST:PORT` URLs, `HOST:PORT/MODEL` locations of
remote specs, and gRPC targets as gRPC itself reads them, which may name several endpoints:

    dns:///triton-headless.ns.svc:8001       one DNS name (it may resolve to several servers)
    ipv4:127.0.0.1:8001,127.0.0.1:8011       a fixed list of servers
    ipv6:[::1]:8001,[::1]:8011

A port is always required (gRPC's default, 443, is never Triton's). Callers that talk to one
server take `GrpcTarget.single()`, which refuses a list of servers with a clear error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MoaiError

_HOST = re.compile(r"^[A-Za-z0-9_.-]+$")  # a DNS name or an IPv4 address


@dataclass(frozen=True)
class Endpoint:
    host: str  # without brackets, also for IPv6
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class GrpcTarget:
    scheme: str  # the gRPC resolver: dns | ipv4 | ipv6
    endpoints: tuple[Endpoint, ...]
    authority: str = ""  # dns://AUTHORITY/...: the DNS server to ask

    def __str__(self) -> str:
        """The target as a gRPC channel takes it."""
        if self.scheme == "dns":
            if not self.authority:
                return str(self.endpoints[0])  # gRPC's default resolver is dns
            return f"dns://{self.authority}/{self.endpoints[0]}"
        return f"{self.scheme}:" + ",".join(map(str, self.endpoints))

    def single(self, what: str) -> Endpoint:
        """The one server this target names, or an error for a list of them."""
        if len(self.endpoints) != 1:
            raise MoaiError(f"{what} {str(self)!r}: names {len(self.endpoints)} servers; one server "
                            "(HOST:PORT) is supported here")
        return self.endpoints[0]


def parse_host_port(text: str, what: str = "address") -> Endpoint:
    """HOST:PORT or [IPV6]:PORT."""
    try:
        return _host_port(text.strip())
    except ValueError as problem:
        raise MoaiError(f"{what} {text!r}: {problem}; expected HOST:PORT") from None


def parse_url(text: str, schemes: tuple[str, ...], what: str = "address") -> tuple[str, Endpoint]:
    """(scheme, endpoint) of SCHEME://HOST:PORT (a trailing '/' is allowed)."""
    expected = " or ".join(f"{s}://HOST:PORT" for s in schemes)
    scheme, _, rest = text.strip().partition("://")
    if scheme not in schemes:
        raise MoaiError(f"{what} {text!r}: expected {expected}")
    try:
        return scheme, _host_port(rest.rstrip("/"))
    except ValueError as problem:
        raise MoaiError(f"{what} {text!r}: {problem}; expected {expected}") from None


def parse_location(location: str, scheme: str) -> tuple[Endpoint, str]:
    """(endpoint, model) of a remote spec's HOST:PORT/MODEL (`scheme` names it in errors)."""
    address, _, model = location.partition("/")
    try:
        if not model:
            raise ValueError("no model")
        return _host_port(address), model
    except ValueError as problem:
        raise MoaiError(f"{scheme}://{location}: {problem}; expected {scheme}://HOST:PORT/MODEL") from None


def parse_grpc_target(text: str, what: str = "gRPC target") -> GrpcTarget:
    """HOST:PORT, grpc://HOST:PORT, dns:[//AUTHORITY/]HOST:PORT, ipv4:A:P[,A:P...] or
    ipv6:[A]:P[,[A]:P...]."""
    try:
        return _grpc_target(text.strip())
    except ValueError as problem:
        raise MoaiError(f"{what} {text!r}: {problem}; expected HOST:PORT, grpc://HOST:PORT or a gRPC target "
                        "(dns:///HOST:PORT, ipv4:IP:PORT,IP:PORT, ipv6:[IP]:PORT)") from None


def _grpc_target(text: str) -> GrpcTarget:
    scheme, _, rest = text.partition(":")
    if scheme in ("ipv4", "ipv6"):
        endpoints = tuple(_host_port(part) for part in rest.split(","))
        for endpoint in endpoints:
            if (":" in endpoint.host) != (scheme == "ipv6"):
                raise ValueError(f"{endpoint.host} is not an {scheme.upper()} address")
        return GrpcTarget(scheme, endpoints)
    if scheme == "dns":
        authority = ""
        if rest.startswith("//"):
            authority, slash, rest = rest[2:].partition("/")
            if not slash:
                raise ValueError("no '/' after the DNS authority")
        return GrpcTarget("dns", (_host_port(rest),), authority)
    if text.startswith("grpc://"):
        text = text[len("grpc://"):].rstrip("/")
    elif "://" in text or scheme in ("unix", "unix-abstract", "vsock", "xds"):
        raise ValueError(f"unsupported scheme {scheme!r}")
    return GrpcTarget("dns", (_host_port(text),))


def _host_port(text: str) -> Endpoint:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("no port after the bracketed IPv6 address")
        port = rest[1:]
        if not re.fullmatch(r"[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?", host) or ":" not in host:
            raise ValueError(f"{host!r} is not an IPv6 address")
    else:
        host, colon, port = text.rpartition(":")
        if not colon:
            raise ValueError("no port")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets, e.g. [::1]:8001")
        if not _HOST.match(host):
            raise ValueError(f"{host!r} is not a host name")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the port must be a number from 1 to 65535, not {port!r}")
    return Endpoint(host, int(port))
