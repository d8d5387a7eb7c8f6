"""Stream tier: stores every reading and runs windowed anomaly detection over it."""

from stream.service import StreamService
from stream.settings import StreamSettings

__all__ = ["StreamService", "StreamSettings"]
