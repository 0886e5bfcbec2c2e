"""The one reader of server addresses (moai_export.core.addresses): HOST:PORT with IPv6 in brackets,
SCHEME://HOST:PORT, HOST:PORT/MODEL of remote specs, and gRPC targets naming several servers;
every bad input is an error that says what is wrong and what was expected."""

from __future__ import annotations

import re

import pytest

from moai_export.core.addresses import (
    Endpoint,
    GrpcTarget,
    parse_grpc_target,
    parse_host_port,
    parse_location,
    parse_url,
)
from moai_export.core.errors import MoaiError


@pytest.mark.parametrize("text, endpoint, shown", [
    ("127.0.0.1:8001", Endpoint("127.0.0.1", 8001), "127.0.0.1:8001"),
    (" triton-0.triton.ns.svc:8001 ", Endpoint("triton-0.triton.ns.svc", 8001), "triton-0.triton.ns.svc:8001"),
    ("[::1]:8001", Endpoint("::1", 8001), "[::1]:8001"),
    ("[fe80::1%eth0]:65535", Endpoint("fe80::1%eth0", 65535), "[fe80::1%eth0]:65535"),
])
def test_host_port(text, endpoint, shown):
    assert parse_host_port(text) == endpoint and str(endpoint) == shown


@pytest.mark.parametrize("text, problem", [
    ("localhost", "no port"),
    ("", "no port"),
    ("::1:8001", r"put an IPv6 address in brackets, e\.g\. \[::1\]:8001"),
    ("[::1]", "no port after the bracketed IPv6 address"),
    ("[localhost]:80", "'localhost' is not an IPv6 address"),
    ("[::1]8001", "no port after the bracketed IPv6 address"),
    ("host:0", "the port must be a number from 1 to 65535, not '0'"),
    ("host:70000", "the port must be a number from 1 to 65535, not '70000'"),
    ("host:http", "the port must be a number from 1 to 65535, not 'http'"),
    (":8001", "'' is not a host name"),
    ("my host:8001", "'my host' is not a host name"),
    ("host/x:8001", "'host/x' is not a host name"),
])
def test_bad_host_port_says_what_is_wrong(text, problem):
    with pytest.raises(MoaiError, match=re.escape(f"--triton '{text}': ") + f"{problem}; expected HOST:PORT$"):
        parse_host_port(text, "--triton")


def test_urls():
    assert parse_url("grpc://[::1]:8001/", ("grpc", "http")) == ("grpc", Endpoint("::1", 8001))
    assert parse_url("http://h:8000", ("grpc", "http")) == ("http", Endpoint("h", 8000))
    for bad, problem in (("h:8000", "expected grpc://HOST:PORT or http://HOST:PORT"),
                         ("https://h:8000", "expected grpc://HOST:PORT or http://HOST:PORT"),
                         ("http://h", "no port; expected grpc://HOST:PORT or http://HOST:PORT")):
        with pytest.raises(MoaiError, match=f"--verify-with '{bad}': {problem}"):
            parse_url(bad, ("grpc", "http"), "--verify-with")


def test_spec_locations():
    assert parse_location("[::1]:8000/moai-embedding", "openai-http") == (Endpoint("::1", 8000), "moai-embedding")
    for bad, problem in (("127.0.0.1", "no model"), ("127.0.0.1:8000/", "no model"), ("127.0.0.1/m", "no port")):
        with pytest.raises(MoaiError, match=f"triton-http://{bad}: {problem}; expected triton-http://HOST:PORT/MODEL"):
            parse_location(bad, "triton-http")


@pytest.mark.parametrize("text, target, shown", [
    ("127.0.0.1:8001", GrpcTarget("dns", (Endpoint("127.0.0.1", 8001),)), "127.0.0.1:8001"),
    ("grpc://[::1]:8001", GrpcTarget("dns", (Endpoint("::1", 8001),)), "[::1]:8001"),
    ("dns:///triton-headless.ns.svc:8001", GrpcTarget("dns", (Endpoint("triton-headless.ns.svc", 8001),)),
     "triton-headless.ns.svc:8001"),
    ("dns://10.0.0.10:53/triton:8001", GrpcTarget("dns", (Endpoint("triton", 8001),), "10.0.0.10:53"),
     "dns://10.0.0.10:53/triton:8001"),
    ("ipv4:127.0.0.1:8001,127.0.0.1:8011",
     GrpcTarget("ipv4", (Endpoint("127.0.0.1", 8001), Endpoint("127.0.0.1", 8011))),
     "ipv4:127.0.0.1:8001,127.0.0.1:8011"),
    ("ipv6:[::1]:8001,[::2]:8011", GrpcTarget("ipv6", (Endpoint("::1", 8001), Endpoint("::2", 8011))),
     "ipv6:[::1]:8001,[::2]:8011"),
])
def test_grpc_targets_as_grpc_reads_them(text, target, shown):
    assert parse_grpc_target(text) == target and str(target) == shown


@pytest.mark.parametrize("text, problem", [
    ("http://h:8000", "unsupported scheme 'http'"),
    ("unix:/run/triton.sock", "unsupported scheme 'unix'"),
    ("ipv4:[::1]:8001", "::1 is not an IPV4 address"),
    ("ipv6:10.0.0.1:8001", "10.0.0.1 is not an IPV6 address"),
    ("ipv4:10.0.0.1:8001,", "no port"),
    ("dns://10.0.0.10", "no '/' after the DNS authority"),
    ("dns:///triton", "no port"),
])
def test_bad_grpc_targets_say_what_is_wrong(text, problem):
    with pytest.raises(MoaiError, match=re.escape(f"--triton '{text}': {problem}; expected HOST:PORT, grpc://")):
        parse_grpc_target(text, "--triton")


def test_one_server_callers_refuse_a_list_of_servers_the_gateway_takes_them():
    from moai_export.gateway.config import GatewayConfig, parse_triton_url

    assert parse_grpc_target("ipv4:10.0.0.1:8001").single("--triton") == Endpoint("10.0.0.1", 8001)
    with pytest.raises(MoaiError, match="'ipv4:10.0.0.1:8001,10.0.0.2:8001': names 2 servers; one server"):
        parse_grpc_target("ipv4:10.0.0.1:8001,10.0.0.2:8001").single("--verify-with")
    assert parse_triton_url("grpc://[::1]:8001/") == "[::1]:8001"
    assert parse_triton_url("dns:///triton.ns.svc:8001") == "triton.ns.svc:8001"
    # replicas behind one gateway: the channel balances across them (gateway/triton_upstream.py)
    assert parse_triton_url("ipv4:10.0.0.1:8001,10.0.0.2:8001") == "ipv4:10.0.0.1:8001,10.0.0.2:8001"
    assert GatewayConfig("dns:///triton-headless.ns.svc.cluster.local:8001", "m").validate().triton
    with pytest.raises(MoaiError, match="--triton 'triton': no port"):
        GatewayConfig("triton", "m").validate()
