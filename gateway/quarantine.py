"""A guard against messages that kill the gateway outright.

Every Python exception a message causes already ends as its dead letter. What no ``except``
can catch is a crash of the process itself (a fault in a native decoder, the kernel's OOM
killer, a stack overflow in C). The broker then sends the unacknowledged message again to the
restarted gateway, which would crash again, for ever: one message would stop all ingest.

So before the gateway works on a message it writes the message's digest (topic and payload)
into a small memory-mapped file, and clears it when done. A process that dies leaves the digest
there (the page cache keeps a shared mapping's writes when the process dies; only a machine
crash loses them, and with them nothing but this count). The next start counts a strike
against it; a message with ``after`` strikes is dead-lettered and acknowledged without being
processed. The strikes live in ``strikes.json`` beside it and go once the message is
dead-lettered or processed.

Cost: one 16-byte BLAKE2b digest and a 17-byte memory write per message.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path

from cityops.core import log
from cityops.core.aio import AsyncService

_log = log.get("gateway.quarantine")

DIGEST_BYTES = 16
_SLOT = 1 + DIGEST_BYTES  # a "busy" byte, then the digest


def digest(topic: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    h.update(topic.encode())
    h.update(b"\0")
    h.update(payload)
    return h.digest()


class CrashGuard(AsyncService):
    def __init__(self, directory: Path, *, after: int) -> None:
        self.directory = directory
        self.after = after
        self._marker: mmap.mmap | None = None
        self._fd: int | None = None
        self._strikes: dict[str, int] = {}

    @property
    def _strikes_file(self) -> Path:
        return self.directory / "strikes.json"

    async def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._strikes_file.exists():
            self._strikes = {k: int(v) for k, v in json.loads(self._strikes_file.read_text()).items()}
        path = self.directory / "in-progress"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < _SLOT:
            os.ftruncate(self._fd, _SLOT)
        self._marker = mmap.mmap(self._fd, _SLOT)
        if self._marker[0]:
            died_on = bytes(self._marker[1:_SLOT]).hex()
            self._strikes[died_on] = self._strikes.get(died_on, 0) + 1
            self._save()
            self._marker[0] = 0
            _log.error(
                "the gateway died while processing a message",
                digest=died_on,
                strikes=self._strikes[died_on],
                quarantined_at=self.after,
            )

    async def stop(self) -> None:
        if self._marker is not None:
            self._marker.close()
            self._marker = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def strikes(self, key: bytes) -> int:
        return self._strikes.get(key.hex(), 0) if self._strikes else 0

    def quarantined(self, key: bytes) -> bool:
        """The message killed the gateway ``after`` times: dead-letter it unprocessed."""
        return self.strikes(key) >= self.after

    def begin(self, key: bytes) -> None:
        assert self._marker is not None, "start() first"
        self._marker[1:_SLOT] = key
        self._marker[0] = 1

    def end(self, key: bytes) -> None:
        """The message was processed (or dead-lettered) without killing the gateway."""
        assert self._marker is not None, "start() first"
        self._marker[0] = 0
        if self._strikes and self._strikes.pop(key.hex(), None) is not None:
            self._save()

    def _save(self) -> None:
        tmp = self._strikes_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._strikes))
        tmp.replace(self._strikes_file)
