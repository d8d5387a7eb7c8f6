from prometheus_client import Counter, Gauge, Histogram

from cityops.core.metrics import LATENCY_BUCKETS

MESSAGES_IN = Counter("cityops_gateway_messages_in_total", "MQTT messages received")
READINGS_OUT = Counter("cityops_gateway_readings_out_total", "Readings forwarded to Kafka")
DEAD_LETTERS = Counter(
    "cityops_gateway_dead_letters_total", "Messages or parts sent to the dead-letter topic", ["kind"]
)
ERRORS = Counter("cityops_gateway_errors_total", "Kafka sends that failed after all retries")
IN_FLIGHT = Gauge("cityops_gateway_in_flight", "Messages sent to Kafka, not yet acknowledged to the broker")
LATENCY = Histogram(
    "cityops_gateway_latency_seconds", "Device timestamp to Kafka acknowledgement", buckets=LATENCY_BUCKETS
)
SEQUENCE_EVENTS = Counter(
    "cityops_gateway_sequence_events_total",
    "Readings by what their sequence number says (next, gap, duplicate, ...)",
    ["event"],
)
SEQUENCE_MISSING = Counter(
    "cityops_gateway_sequence_missing_total", "Readings skipped over by sequence gaps (lost or not yet arrived)"
)
