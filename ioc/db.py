"""The IOC's own tables, next to the shared schema (``cityops.core.schema``) that holds alerts and readings.

Times are ``timestamptz``; positions are ``geography`` (WGS 84) so that PostGIS measures metres.
Escalation deadlines live in ``incidents`` itself, so a restarted service picks them up.
"""

from __future__ import annotations

import psycopg

DDL = """
CREATE TABLE IF NOT EXISTS users (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'dispatcher', 'crew', 'admin')),
    crew_id       text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'crew') = (crew_id IS NOT NULL))
);

CREATE TABLE IF NOT EXISTS crews (
    crew_id     text PRIMARY KEY,
    name        text NOT NULL,
    skills      text[] NOT NULL,
    -- Local time of day (city time zone); a shift that ends before it starts runs past midnight.
    shift_start time NOT NULL DEFAULT '00:00',
    shift_end   time NOT NULL DEFAULT '00:00',
    geom        geography(Point, 4326),
    located_at  timestamptz
);

CREATE TABLE IF NOT EXISTS critical_sites (
    site_id text PRIMARY KEY,
    name    text NOT NULL,
    kind    text NOT NULL,
    weight  double precision NOT NULL DEFAULT 1,
    geom    geography(Point, 4326) NOT NULL
);

CREATE TABLE IF NOT EXISTS incidents (
    incident_id     bigserial PRIMARY KEY,
    version         integer NOT NULL DEFAULT 1,
    type            text NOT NULL,
    category        text NOT NULL,
    title           text NOT NULL,
    severity        integer NOT NULL CHECK (severity BETWEEN 1 AND 4),
    state           text NOT NULL,
    district        text,
    group_key       text,
    groups          text[] NOT NULL DEFAULT '{}',
    assets          text[] NOT NULL DEFAULT '{}',
    series          text[] NOT NULL DEFAULT '{}',
    detectors       text[] NOT NULL DEFAULT '{}',
    drops           integer NOT NULL DEFAULT 0,
    -- Centroid of the affected assets (NULL when none of them is registered with a position).
    geom            geography(Point, 4326),
    radius_m        double precision NOT NULL DEFAULT 0,
    impact          double precision NOT NULL DEFAULT 1,
    priority        double precision NOT NULL DEFAULT 1,
    alert_count     integer NOT NULL DEFAULT 0,
    explanation     text NOT NULL DEFAULT '',
    crew_id         text REFERENCES crews,
    detected_at     timestamptz NOT NULL,
    opened_at       timestamptz NOT NULL,
    last_alert_at   timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    acknowledged_at timestamptz,
    dispatched_at   timestamptz,
    crew_acknowledged_at timestamptz,
    en_route_at     timestamptz,
    arrived_at      timestamptz,
    resolved_at     timestamptz,
    closed_at       timestamptz,
    ack_due         timestamptz,
    arrive_due      timestamptz,
    ack_breached    boolean NOT NULL DEFAULT false,
    arrive_breached boolean NOT NULL DEFAULT false,
    resolve_pending boolean NOT NULL DEFAULT false
);
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS groups text[] NOT NULL DEFAULT '{}';
-- Alerts that were silences (staleness): what decides a concentrator_offline.
ALTER TABLE incidents ADD COLUMN IF NOT EXISTS silences integer NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (state) WHERE state NOT IN ('closed', 'cancelled');
CREATE INDEX IF NOT EXISTS incidents_group ON incidents (category, group_key);

CREATE TABLE IF NOT EXISTS maintenance_windows (
    window_id  bigserial PRIMARY KEY,
    device_id  text,
    group_key  text,
    area       geography(Polygon, 4326),
    starts_at  timestamptz NOT NULL,
    ends_at    timestamptz NOT NULL,
    reason     text NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at),
    CHECK (num_nonnulls(device_id, group_key, area) = 1)
);

ALTER TABLE alerts ADD COLUMN IF NOT EXISTS incident_id bigint;
ALTER TABLE alerts ADD COLUMN IF NOT EXISTS maintenance_id bigint;
CREATE INDEX IF NOT EXISTS alerts_incident ON alerts (incident_id);

-- Who did what, when. Append-only: the database itself refuses to change or remove a row.
CREATE TABLE IF NOT EXISTS audit_log (
    audit_id    bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor       text NOT NULL,
    role        text NOT NULL,
    action      text NOT NULL,
    incident_id bigint,
    from_state  text,
    to_state    text,
    note        text NOT NULL DEFAULT '',
    data        jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS audit_incident ON audit_log (incident_id, audit_id);
CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END $$;
DROP TRIGGER IF EXISTS audit_log_no_change ON audit_log;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- Public warnings issued (OASIS CAP 1.2), one per incident version that was published; an
-- update must reference the previous message exactly as it was sent.
CREATE TABLE IF NOT EXISTS cap_messages (
    incident_id      bigint NOT NULL,
    cap_version      integer NOT NULL,
    incident_version integer NOT NULL,
    sent             timestamptz NOT NULL,
    issued_by        text NOT NULL,
    body             bytea NOT NULL,
    PRIMARY KEY (incident_id, cap_version)
);

-- Live events, numbered, so that a WebSocket client resumes from its last event id.
CREATE TABLE IF NOT EXISTS ioc_events (
    event_id bigserial PRIMARY KEY,
    at       timestamptz NOT NULL,
    channel  text NOT NULL,
    body     jsonb NOT NULL
);
CREATE INDEX IF NOT EXISTS ioc_events_channel ON ioc_events (channel, event_id);
"""


async def apply(conn: psycopg.AsyncConnection[object]) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(727280)")
        await conn.execute(DDL.encode())
