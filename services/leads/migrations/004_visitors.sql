-- Visitors (anonymous ids: a browser, a device) and their visits, linked to leads.

-- A touch is a form submission or a visit. One page view touches every lead its visitor is
-- linked to, so a touch's event is unique per lead, not across leads.
ALTER TABLE touches ADD COLUMN kind text NOT NULL DEFAULT 'form_submission'
    CHECK (kind IN ('form_submission', 'page_view'));
ALTER TABLE touches DROP CONSTRAINT touches_event_id_key;
ALTER TABLE touches ADD CONSTRAINT touches_once_per_lead UNIQUE (lead_id, event_id);

-- Every page view that carried UTM, linked or not yet: a visitor linked later adopts them.
CREATE TABLE visits (
    event_id      uuid PRIMARY KEY,  -- the page_view event
    anonymous_id  text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    campaign_id   text,              -- utm.campaign
    channel       text,              -- utm.medium
    source        text,
    term          text,
    content       text,
    page_url      text
);
CREATE INDEX visits_by_visitor ON visits (anonymous_id);

-- Which visitors are which leads: a form submission carrying an anonymous id links it to
-- the submission's lead. Many-to-many: a shared device belongs to everyone who submitted
-- from it. last_seen_at = occurred_at of the newest such submission.
CREATE TABLE lead_visitors (
    anonymous_id  text NOT NULL,
    lead_id       uuid NOT NULL REFERENCES leads (lead_id),
    last_seen_at  timestamptz NOT NULL,
    PRIMARY KEY (anonymous_id, lead_id)
);
CREATE INDEX lead_visitors_by_lead ON lead_visitors (lead_id, last_seen_at);
