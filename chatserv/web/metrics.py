"""``/metrics``: the daemon's figures in Prometheus text format, through prometheus_client.

Each web port has its own registry (tests run several daemons in one process): the
process's RSS, descriptors and CPU, the connections and sessions it can see, every counter
of the service (each present at 0 from the start), the service's delivery-latency
histogram and the REST request latency, by endpoint.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

disable_created_metrics()  # no *_created series: a scrape shows what is counted, nothing else

# The service's counters (ChatService.stats), each exported as chatserv_<name>_total.
SERVICE_COUNTERS = {
    "registrations": "Accounts created, on any port.",
    "logins": "Successful logins, on any port.",
    "login_failures": "Failed logins (wrong name or password), on any port.",
    "sessions": "Service sessions opened: logged-in connections and Socket.IO connections.",
    "messages": "Messages stored, direct and room.",
    "deliveries": "Messages handed to a live session, one per session reached.",
}
# The web port's own counters (WebSite.counters), exported as chatserv_web_<name>_total.
WEB_COUNTERS = {
    "errors": "Web requests answered with an error (REST 4xx/5xx, oversized bodies).",
}
# Seconds: a REST call is answered from memory in well under a millisecond, or waits on the
# store (a commit, a history read) for a few milliseconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebMetrics:
    def __init__(self, site):
        self.site = site
        self.clock = site.clock
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(_Figures(site))
        self.registry.register(site.service.delivery_latency)
        self.rest_latency = Histogram(
            "chatserv_rest_request_seconds", "Seconds from a REST request's arrival to its answer.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)

    def rest_timer(self, endpoint: str) -> _Timer:
        return _Timer(self.rest_latency.labels(endpoint=endpoint), self.clock)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Timer:
    def __init__(self, histogram, clock):
        self.histogram = histogram
        self.clock = clock
        self.started = clock.seconds()

    def stop(self):
        self.histogram.observe(max(0.0, self.clock.seconds() - self.started))


class _Figures:
    """What the site knows at the moment of a scrape."""

    def __init__(self, site):
        self.site = site

    def collect(self):
        site = self.site
        connections = GaugeMetricFamily("chatserv_connections", "Open connections, by protocol.",
                                        labels=["protocol"])
        names = {c.protocol_name for c in site.tracker.connections} | {"http", "socket.io"}
        for name in sorted(names):
            connections.add_metric([name], site.tracker.count(name))
        yield connections
        yield GaugeMetricFamily("chatserv_rest_sessions", "Live REST session IDs.", len(site.web_sessions))
        yield GaugeMetricFamily("chatserv_engineio_sessions", "Open Engine.IO sessions.",
                                len(site.engine.sessions))
        yield CounterMetricFamily(
            "chatserv_connections_refused",
            "Connections refused by --max-connections or --connections-per-ip, on any port.",
            site.tracker.refused)
        node = GaugeMetricFamily("chatserv_node_info", "This node of the cluster (--node-name).",
                                 labels=["node"])
        node.add_metric([site.service.node_name], 1)
        yield node
        bus_stats = getattr(site.service.bus, "stats", {})
        for name in sorted(bus_stats):
            yield CounterMetricFamily(f"chatserv_bus_{name}", f"Redis bus: {name}.", bus_stats[name])
        stats = site.service.stats
        for name in sorted(set(SERVICE_COUNTERS) | set(stats)):
            description = SERVICE_COUNTERS.get(name, f"The service's {name}.")
            yield CounterMetricFamily(f"chatserv_{name}", description, stats[name])
        for name in sorted(set(WEB_COUNTERS) | set(site.counters)):
            description = WEB_COUNTERS.get(name, f"The web port's {name}.")
            yield CounterMetricFamily(f"chatserv_web_{name}", description, site.counters[name])
