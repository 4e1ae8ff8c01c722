"""Prometheus metrics: requests, latency and errors per route, registry size, backend starts.

Each app gets its own CollectorRegistry, so several gateways (tests) in one
process do not share counters.
"""
import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from face_contract.errors import Unavailable

from ..errors import error_type

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StateCollector:
    """Values read at scrape time from the stores and the backend supervisor."""

    def __init__(self, stores, backends):
        self.stores, self.backends = stores, backends

    def collect(self):
        records = GaugeMetricFamily("face_gateway_registry_records",
                                    "Registered faces per store and model",
                                    labels=["store", "model"])
        for store_name, store in self.stores.items():
            try:
                counts = store.counts_by_model()
            except Unavailable:  # a database that is down has no count to report
                continue
            for model, count in counts.items():
                records.add_metric([store_name, model], count)
        yield records
        starts = CounterMetricFamily("face_gateway_backend_starts",
                                     "Backend processes started per model (restarts included)",
                                     labels=["model"])
        for model, count in self.backends.starts().items():
            starts.add_metric([model], count)
        yield starts
        calls = CounterMetricFamily("face_gateway_backend_calls",
                                    "Calls sent to each backend of a model's pool",
                                    labels=["model", "backend"])
        for (model, address), count in self.backends.calls().items():
            calls.add_metric([model, address], count)
        yield calls


class Metrics:
    def __init__(self, stores, backends):
        self.registry = CollectorRegistry()
        self.requests = Counter("face_gateway_requests", "HTTP requests answered",
                                ["method", "route", "code"], registry=self.registry)
        self.latency = Histogram("face_gateway_request_duration_seconds",
                                 "Time to answer an HTTP request", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.errors = Counter("face_gateway_errors", "Error responses by status code and type",
                              ["code", "type"], registry=self.registry)
        self.registry.register(_StateCollector(stores, backends))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if status >= 400:
            self.errors.labels(str(status), error_type(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware outside everything else, so 413s and unknown routes are counted too."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")  # FastAPI records the matched route in the scope
            self.metrics.observe(scope["method"], getattr(route, "path", "unmatched"), status,
                                 time.perf_counter() - start)
