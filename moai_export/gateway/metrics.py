"""Prometheus metrics of one gateway (its own registry: several gateways may share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("moai_gateway_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("moai_gateway_errors", "Error replies by route and code",
                              ["route", "code"], registry=self.registry)
        self.latency = Histogram("moai_gateway_request_seconds", "Request latency by route", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("moai_gateway_prompt_tokens", "Tokens embedded (counted by the upstream)",
                              registry=self.registry)
        self.texts = Counter("moai_gateway_texts", "Texts embedded", registry=self.registry)
        self.truncated = Counter("moai_gateway_truncated_texts", "Texts cut to the model's max tokens",
                                 registry=self.registry)
        self.retries = Counter("moai_gateway_upstream_retries", "Upstream calls tried again on another replica, "
                               "by why the failed try failed", ["reason"], registry=self.registry)
        self.in_flight = Gauge("moai_gateway_in_flight", "Embedding requests being served or queued",
                               registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
