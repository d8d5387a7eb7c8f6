"""The stack's durability settings reach the broker's and Kafka's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cityops.devstack import Stack, StackSettings
from cityops.devstack.mosquitto import Persistence, render_config


def _render(persistence: Persistence) -> list[str]:
    text = render_config(host="h", port=1, conf_dir="/c", data_dir="/d", user="u", persistence=persistence)
    return [line for line in text.splitlines() if line.startswith("autosave")]


def test_mosquitto_saves_every_5_s_by_default_and_per_message_when_asked() -> None:
    assert _render(Persistence()) == ["autosave_interval 5", "autosave_on_changes false"]
    assert _render(Persistence(1, True)) == ["autosave_interval 1", "autosave_on_changes true"]


def test_stack_settings_carry_durability_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOPS_STACK_MQTT_AUTOSAVE_ON_CHANGES", "true")
    monkeypatch.setenv("CITYOPS_STACK_MQTT_AUTOSAVE_INTERVAL", "1")
    monkeypatch.setenv("CITYOPS_STACK_KAFKA_FLUSH_MESSAGES", "1")
    stack = Stack(StackSettings(state_dir=tmp_path))
    assert stack.mosquitto.persistence == Persistence(1, True)
    assert stack.kafka.flush_messages == 1
    props = stack.kafka._configure().read_text()
    assert "log.flush.interval.messages=1\n" in props


def test_kafka_leaves_flushing_to_the_os_by_default(tmp_path: Path) -> None:
    stack = Stack(StackSettings(state_dir=tmp_path))
    assert "log.flush.interval" not in stack.kafka._configure().read_text()


def test_a_durability_setting_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYOPS_STACK_KAFKA_FLUSH_MESSAGES", "0")
    with pytest.raises(ValidationError, match="kafka_flush_messages"):
        StackSettings()
