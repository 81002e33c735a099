-- Visitors, their sessions and page views (docs/kpis.md has the rules).
--
-- Page views are the highest-volume input, so sessions are kept incrementally rather than
-- recomputed per KPI request: a consumer batch re-splits each affected visitor's page views
-- from the last one stored before the batch's earliest (store.py, _SESSIONIZE); what lies
-- before that page view cannot change.

-- One row per anonymous id seen (in a page view or a lead event). `visitor` is a compact
-- number for the big tables; `linked`: some lead is known to be this visitor. The row is
-- also the lock that orders every write about the visitor (its page views and its links).
CREATE TABLE visitors (
    anonymous_id  text PRIMARY KEY,
    visitor       bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    linked        boolean NOT NULL DEFAULT false
);

-- The union of the anonymous ids lead events said were each lead's (a shared device can be
-- several leads', a lead can have several devices).
CREATE TABLE visitor_leads (
    visitor  bigint NOT NULL,
    lead_id  uuid NOT NULL,
    PRIMARY KEY (visitor, lead_id)
);

-- One row per page view: its own UTM (campaign = utm.campaign, channel = utm.medium) and the
-- landing UTM of the session it belongs to, by which it is counted.
CREATE TABLE page_views (
    visitor              bigint NOT NULL,
    occurred_at          timestamptz NOT NULL,
    event_id             uuid NOT NULL,
    campaign_id          text,
    channel              text,
    session_campaign_id  text,
    session_channel      text,
    PRIMARY KEY (visitor, occurred_at, event_id)
);
CREATE INDEX page_views_occurred_at ON page_views (occurred_at);

-- One row per session, keyed by its landing page view. `linked` copies visitors.linked, so
-- counting the period's visitors needs no join for the (many) visitors no lead is known for.
CREATE TABLE sessions (
    visitor      bigint NOT NULL,
    started_at   timestamptz NOT NULL,
    event_id     uuid NOT NULL,
    campaign_id  text,
    channel      text,
    linked       boolean NOT NULL,
    PRIMARY KEY (visitor, started_at, event_id)
);
CREATE INDEX sessions_started_at ON sessions (started_at) INCLUDE (visitor, campaign_id, channel, linked);

-- Page views summed per UTC hour and session campaign/channel (null: unattributed), as
-- campaign_hourly does for campaign events. Kept by the same statement that assigns page
-- views to sessions, with the deltas of the page views a late one moved to another session.
CREATE TABLE page_view_hourly (
    hour         timestamptz NOT NULL,  -- date_trunc('hour', occurred_at, 'UTC')
    campaign_id  text,
    channel      text,
    page_views   bigint NOT NULL,
    CONSTRAINT page_view_hourly_key UNIQUE NULLS NOT DISTINCT (hour, campaign_id, channel)
);
CREATE INDEX page_view_hourly_campaign ON page_view_hourly (campaign_id, hour);
