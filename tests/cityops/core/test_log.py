import json
import logging

import pytest

from cityops.core import log


def test_tokens_in_logged_urls_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        log.configure("INFO", "json")
        logging.getLogger("uvicorn.error").info(
            '%s - "WebSocket %s" [accepted]', "127.0.0.1:5", "/ws/wall?token=eyJabc.def.ghi&last_event_id=3"
        )
        log.get("ioc").info("login", url="/x?access_token=secret-value")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert lines[0]["event"] == '127.0.0.1:5 - "WebSocket /ws/wall?token=[redacted]&last_event_id=3" [accepted]'
    assert lines[1]["url"] == "/x?access_token=[redacted]"
    assert "eyJabc" not in json.dumps(lines) and "secret-value" not in json.dumps(lines)
