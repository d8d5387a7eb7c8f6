from prometheus_client import Counter, Gauge, Histogram

from cityops.core.metrics import LATENCY_BUCKETS

ALERTS_IN = Counter("cityops_ioc_alerts_in_total", "Alerts consumed from Kafka")
ALERTS_NEW = Counter("cityops_ioc_alerts_stored_total", "Alerts stored for the first time")
ERRORS = Counter("cityops_ioc_errors_total", "Alert batches that failed", ["stage"])
WS_CLIENTS = Gauge("cityops_ioc_ws_clients", "Connected WebSocket clients")
WS_SENT = Counter("cityops_ioc_ws_messages_sent_total", "Messages pushed to WebSocket clients")
WS_DROPPED = Counter("cityops_ioc_ws_clients_dropped_total", "Clients dropped for falling behind")
LAG = Gauge("cityops_ioc_consumer_lag", "Alert messages behind the high watermark", ["partition"])
LATENCY = Histogram(
    "cityops_ioc_latency_seconds",
    "Device timestamp of the anomalous reading to WebSocket push",
    buckets=LATENCY_BUCKETS,
)
INCIDENTS_OPENED = Counter("cityops_ioc_incidents_opened_total", "Incidents opened", ["type"])
TRANSITIONS = Counter("cityops_ioc_incident_transitions_total", "Incident state changes", ["to"])
SLA_BREACHES = Counter("cityops_ioc_sla_breaches_total", "Escalation deadlines missed", ["deadline"])
OPEN_INCIDENTS = Gauge("cityops_ioc_open_incidents", "Open incidents", ["severity", "district", "type"])
KPI_SECONDS = Gauge(
    "cityops_ioc_kpi_seconds",
    "Mean time from detection to each milestone over the KPI window (default today)",
    ["milestone", "district", "type"],
)
ALERTS_UNPLACED = Counter("cityops_ioc_alerts_unplaced_total", "Alerts stored that open no incident", ["reason"])
