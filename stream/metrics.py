from prometheus_client import Counter, Gauge, Histogram

from cityops.core.metrics import BATCH_BUCKETS, LATENCY_BUCKETS

MESSAGES_IN = Counter("cityops_stream_messages_in_total", "Kafka reading messages consumed")
ROWS_STORED = Counter("cityops_stream_rows_stored_total", "Reading rows newly stored")
ROWS_DUPLICATE = Counter("cityops_stream_rows_duplicate_total", "Reading rows already stored (replays)")
ALERTS_OUT = Counter("cityops_stream_alerts_out_total", "Alerts published", ["detector"])
SILENCES = Counter(
    "cityops_stream_silence_alerts_total",
    "Staleness alerts: incident (a device silent), sensor_fault (one metric), platform (the feed)",
    ["alert_class"],
)
DEAD_LETTERS = Counter("cityops_stream_dead_letters_total", "Undecodable Kafka messages dead-lettered")
ERRORS = Counter("cityops_stream_errors_total", "Batches that failed", ["stage"])
BATCH_SIZE = Histogram("cityops_stream_batch_messages", "Messages per processed batch", buckets=BATCH_BUCKETS)
LAG = Gauge("cityops_stream_consumer_lag", "Messages behind the partition's high watermark", ["partition"])
LATENCY = Histogram("cityops_stream_latency_seconds", "Device timestamp to durably stored", buckets=LATENCY_BUCKETS)
WARMUP_READINGS = Counter(
    "cityops_stream_warmup_readings_total", "Stored readings replayed into detectors for series seen for the first time"
)
STATES_RESTORED = Counter(
    "cityops_stream_states_restored_total", "Series whose detector state was restored from a snapshot"
)
STATES_SAVED = Counter("cityops_stream_states_saved_total", "Series detector states saved to PostgreSQL")
PROFILE_RELOADS = Counter("cityops_stream_profile_reloads_total", "Detector profile reloads", ["outcome"])
DETECT_SECONDS = Histogram(
    "cityops_stream_detect_seconds", "Time in the detector kernel per batch", buckets=LATENCY_BUCKETS
)
SERIES = Gauge("cityops_stream_series", "Series (device x metric) the detectors hold state for")
