import dataclasses
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import xmlschema

from ioc.cap import Incident, incident_to_cap

NS = "urn:oasis:names:tc:emergency:cap:1.2"
XSD = Path(__file__).parent / "data" / "CAP-v1.2.xsd"
CET = timezone(timedelta(hours=1))
SENDER = "ioc@city.example"
SENT = datetime(2026, 11, 21, 10, 0, tzinfo=CET)
CAP_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")
# Corners of the affected area plus one asset inside it, which must not become a polygon vertex.
CORNERS = [(52.3800, 4.9000), (52.3800, 4.9200), (52.3950, 4.9200), (52.3950, 4.9000)]
INSIDE = (52.3870, 4.9100)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(XSD)


def incident(**changes: Any) -> Incident:
    base = Incident(
        incident_id=42,
        version=1,
        type="water_contamination",
        category="water_quality",
        severity=4,
        state="new",
        title="Coliform bacteria in the drinking water",
        explanation="Coliform and turbidity sensors in district metered area DMA-3 exceed limits.",
        district="Noord",
        lat=52.3875,
        lon=4.9100,
        points=[*CORNERS, INSIDE],
        radius_m=900.0,
        opened_at=datetime(2026, 11, 21, 9, 50, tzinfo=CET),
        updated_at=datetime(2026, 11, 21, 9, 58, tzinfo=CET),
        expires_at=datetime(2026, 11, 22, 10, 0, tzinfo=CET),
    )
    return dataclasses.replace(base, **changes)


def export(inc: Incident, **kwargs: Any) -> ET.Element:
    return ET.fromstring(incident_to_cap(inc, sender=SENDER, sent=kwargs.pop("sent", SENT), **kwargs))


def qualified(path: str) -> str:
    return "/".join(f"{{{NS}}}{step}" for step in path.split("/"))


def text(root: ET.Element, path: str) -> str | None:
    found = root.find(qualified(path))
    return None if found is None else found.text


def texts(root: ET.Element, path: str) -> list[str]:
    return [e.text or "" for e in root.findall(qualified(path))]


def test_contamination_is_a_valid_alert_telling_people_not_to_drink(schema: xmlschema.XMLSchema) -> None:
    xml = incident_to_cap(incident(), sender=SENDER, sent=SENT, web="https://city.example/incidents/42?a=1&b=2")
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert root.tag == f"{{{NS}}}alert"
    assert text(root, "identifier") == "city.example.incident.42.v1"
    assert text(root, "sender") == SENDER
    assert text(root, "sent") == "2026-11-21T10:00:00+01:00"
    assert (text(root, "status"), text(root, "msgType"), text(root, "scope")) == ("Actual", "Alert", "Public")
    assert text(root, "references") is None
    assert texts(root, "info/category") == ["Health"]
    assert texts(root, "info/responseType") == ["Avoid"]
    assert (text(root, "info/urgency"), text(root, "info/severity"), text(root, "info/certainty")) == (
        "Immediate",
        "Extreme",
        "Observed",
    )
    assert text(root, "info/language") == "en-US"
    assert text(root, "info/event") == "Drinking water contamination"
    assert text(root, "info/expires") == "2026-11-22T10:00:00+01:00"
    assert "Do not drink tap water" in (text(root, "info/instruction") or "")
    assert "DMA-3" in (text(root, "info/description") or "")
    assert text(root, "info/web") == "https://city.example/incidents/42?a=1&b=2"
    assert text(root, "info/area/areaDesc") == "Noord"


def test_schema_check_is_not_vacuous(schema: xmlschema.XMLSchema) -> None:
    good = incident_to_cap(incident(), sender=SENDER, sent=SENT).decode()
    assert schema.is_valid(good)
    for bad in (
        good.replace("+01:00</sent>", "Z</sent>"),  # CAP's pattern forbids "Z"
        good.replace("<scope>Public</scope>", ""),  # required element
        good.replace("<category>Health</category>", "<category>Water</category>"),
    ):
        assert bad != good and not schema.is_valid(bad)


def test_update_references_the_previous_version(schema: xmlschema.XMLSchema) -> None:
    prev = datetime(2026, 11, 21, 8, 30, 5, tzinfo=UTC)
    xml = incident_to_cap(
        incident(version=3, state="dispatched", previous_sent=prev), sender=SENDER, sent=SENT, status="Exercise"
    )
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert text(root, "identifier") == "city.example.incident.42.v3"
    assert text(root, "msgType") == "Update"
    assert text(root, "status") == "Exercise"
    assert text(root, "references") == f"{SENDER},city.example.incident.42.v2,2026-11-21T08:30:05-00:00"
    assert text(root, "incidents") == "city.example.incident.42"
    assert text(root, "info/urgency") == "Immediate"
    assert "dispatched" in (text(root, "info/description") or "")


def test_update_without_previous_sent_is_refused() -> None:
    with pytest.raises(ValueError, match=r"previous_sent .* is required"):
        incident_to_cap(incident(version=2, state="acknowledged"), sender=SENDER, sent=SENT)
    later = incident(version=2, state="acknowledged", previous_sent=SENT + timedelta(seconds=1))
    with pytest.raises(ValueError, match="previous_sent is later than sent"):
        incident_to_cap(later, sender=SENDER, sent=SENT)


def test_cancelled_incident_cancels_the_previous_message(schema: xmlschema.XMLSchema) -> None:
    prev = datetime(2026, 11, 21, 9, 55, tzinfo=CET)
    xml = incident_to_cap(incident(version=2, state="cancelled", previous_sent=prev), sender=SENDER, sent=SENT)
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert text(root, "msgType") == "Cancel"
    assert text(root, "references") == f"{SENDER},city.example.incident.42.v1,2026-11-21T09:55:00+01:00"
    assert (text(root, "info/headline") or "").startswith("Cancelled: ")
    assert text(root, "info/urgency") == "Past"


@pytest.mark.parametrize("state", ["resolved", "closed"])
def test_resolved_incident_is_an_all_clear_update(schema: xmlschema.XMLSchema, state: str) -> None:
    prev = datetime(2026, 11, 21, 9, 55, tzinfo=CET)
    xml = incident_to_cap(incident(version=5, state=state, previous_sent=prev), sender=SENDER, sent=SENT)
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert text(root, "msgType") == "Update"
    assert texts(root, "info/responseType") == ["AllClear"]
    assert text(root, "info/urgency") == "Past"
    assert "safe to drink" in (text(root, "info/instruction") or "")
    assert (text(root, "info/headline") or "").startswith("Resolved: ")


@pytest.mark.parametrize("state", ["resolved", "cancelled"])
def test_first_version_cannot_be_over(state: str) -> None:
    with pytest.raises(ValueError, match="no earlier message"):
        incident_to_cap(incident(state=state), sender=SENDER, sent=SENT)


def test_polygon_is_the_closed_hull_in_lat_lon_order() -> None:
    root = export(incident(points=[*CORNERS, INSIDE, CORNERS[0]]))
    (polygon,) = texts(root, "info/area/polygon")
    pairs = [tuple(float(v) for v in pair.split(",")) for pair in polygon.split(" ")]
    assert pairs[0] == pairs[-1]
    assert len(pairs) == len(CORNERS) + 1
    assert set(pairs) == set(CORNERS)  # lat first: (52.x, 4.x), and the inside asset is not a vertex
    assert all(re.fullmatch(r"-?\d+\.\d{6},-?\d+\.\d{6}", pair) for pair in polygon.split(" "))


@pytest.mark.parametrize(
    "points",
    [
        [(52.38, 4.90)],
        [(52.38, 4.90), (52.39, 4.91)],
        [(52.38, 4.90), (52.38, 4.90), (52.3800000001, 4.90)],  # one point after rounding
        [(52.38, 4.90), (52.39, 4.91), (52.40, 4.92)],  # collinear: no area
    ],
)
def test_no_polygon_when_points_span_no_area(schema: xmlschema.XMLSchema, points: list[tuple[float, float]]) -> None:
    xml = incident_to_cap(incident(points=points), sender=SENDER, sent=SENT)
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert texts(root, "info/area/polygon") == []
    assert len(texts(root, "info/area/circle")) == 1


def test_circle_is_centre_and_radius_in_km() -> None:
    root = export(incident(radius_m=1234.0))
    assert texts(root, "info/area/circle") == ["52.387500,4.910000 1.234"]
    assert texts(export(incident(radius_m=0.0)), "info/area/circle") == ["52.387500,4.910000 0.100"]


def test_area_without_district_names_the_centroid() -> None:
    assert text(export(incident(district=None)), "info/area/areaDesc") == "around 52.387500,4.910000"


def test_datetimes_have_seconds_and_numeric_offsets_only() -> None:
    root = export(
        incident(opened_at=datetime(2026, 11, 21, 9, 50, 1, 999999, tzinfo=UTC)),
        sent=datetime(2026, 11, 21, 10, 0, 0, 500000, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
    )
    assert text(root, "sent") == "2026-11-21T10:00:00-05:30"
    assert text(root, "info/onset") == "2026-11-21T09:50:01-00:00"  # CAP writes UTC as -00:00
    stamps = [e.text or "" for e in root.iter() if e.tag.split("}")[1] in {"sent", "onset", "expires"}]
    assert len(stamps) == 3
    assert all(CAP_DATETIME.fullmatch(s) and "Z" not in s and "." not in s for s in stamps)


def test_markup_in_text_is_escaped_and_invalid_characters_dropped(schema: xmlschema.XMLSchema) -> None:
    title = 'Pipe <burst> & "leak" at Q&A street\x00'
    inc = incident(title=title, explanation="a < b && c > d\x1b", district="Noord & <Oost>\x07")
    xml = incident_to_cap(inc, sender=SENDER, sent=SENT)
    assert b"&lt;burst&gt; &amp;" in xml and b"<burst>" not in xml
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert text(root, "info/headline") == 'Pipe <burst> & "leak" at Q&A street'
    assert (text(root, "info/description") or "").startswith("a < b && c > d\n")
    assert text(root, "info/area/areaDesc") == "Noord & <Oost>"


def test_headline_is_shorter_than_160_characters() -> None:
    headline = text(export(incident(title="Burst " * 60)), "info/headline") or ""
    assert len(headline) < 160 and headline.endswith("…") and headline.startswith("Burst Burst")


@pytest.mark.parametrize(
    ("type_", "category", "response"),
    [
        ("water_contamination", "Health", "Avoid"),
        ("flooding", "Met", "Avoid"),
        ("pipe_burst", "Infra", "Monitor"),
        ("water_main_pressure", "Infra", "Monitor"),
        ("cabinet_power_loss", "Infra", "Monitor"),
        ("lamp_fault", "Infra", "Monitor"),
        ("device_offline", "Infra", "Monitor"),
        ("drainage_fault", "Infra", "Monitor"),
        ("air_pollution", "Env", "Shelter"),
        ("noise", "Env", "Monitor"),
        ("sinkhole", "Other", "Monitor"),
    ],
)
def test_category_and_response_follow_the_type(
    schema: xmlschema.XMLSchema, type_: str, category: str, response: str
) -> None:
    xml = incident_to_cap(incident(type=type_, category="environment"), sender=SENDER, sent=SENT)
    schema.validate(xml)
    root = ET.fromstring(xml)
    assert texts(root, "info/category") == [category]
    assert texts(root, "info/responseType") == [response]


def test_unknown_type_gets_an_event_from_its_category() -> None:
    assert text(export(incident(type="sinkhole", category="drainage")), "info/event") == "Drainage incident"


def test_minor_incidents_are_not_immediate() -> None:
    root = export(incident(type="air_pollution", category="environment", severity=2))
    assert (text(root, "info/urgency"), text(root, "info/severity")) == ("Expected", "Moderate")
    assert texts(root, "info/responseType") == ["Monitor"]


@pytest.mark.parametrize(
    ("changes", "kwargs", "message"),
    [
        ({"opened_at": datetime(2026, 11, 21, 9, 50)}, {}, "opened_at must be timezone-aware"),
        ({"expires_at": datetime(2026, 11, 22, 9, 50)}, {}, "expires_at must be timezone-aware"),
        ({}, {"sent": datetime(2026, 11, 21, 10, 0)}, "sent must be timezone-aware"),
        ({"severity": 0}, {}, "severity must be 1..4"),
        ({"severity": 5}, {}, "severity must be 1..4"),
        ({"points": []}, {}, "points must not be empty"),
        ({"points": [(91.0, 4.9)]}, {}, r"points\[0\] is not a valid"),
        ({"lon": float("nan")}, {}, "centroid is not a valid"),
        ({"lat": -90.5}, {}, "centroid is not a valid"),
        ({"radius_m": -1.0}, {}, "radius_m"),
        ({"state": "paused"}, {}, "unknown incident state"),
        ({"version": 0}, {}, "version must be >= 1"),
        ({}, {"sender": "ioc ops@city.example"}, "sender"),
        ({}, {"sender": "ioc,ops"}, "sender"),
        ({}, {"status": "Live"}, "status"),
        ({}, {"web": "city.example/incidents/42"}, "web"),
    ],
)
def test_invalid_input_raises_value_error(changes: dict[str, Any], kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"sender": SENDER, "sent": SENT, **kwargs}
    with pytest.raises(ValueError, match=message):
        incident_to_cap(incident(**changes), **args)
