-- Leads: one row per normalised email. The derived columns (created_at, profile, score,
-- first/last touch) follow from the lead's submissions (see leads.summary, migration 002).
CREATE TABLE leads (
    id           uuid PRIMARY KEY,
    email        text NOT NULL UNIQUE,  -- normalised: trimmed, lower-cased
    name         text,
    company      text,
    phone        text,
    fields       jsonb NOT NULL DEFAULT '{}',
    score        integer NOT NULL DEFAULT 0,
    stage        text NOT NULL DEFAULT 'lead' CHECK (stage IN ('lead', 'mql', 'sql', 'disqualified')),
    created_at   timestamptz NOT NULL,  -- occurred_at of the earliest submission
    first_touch  jsonb NOT NULL,
    last_touch   jsonb NOT NULL,
    touch_count  integer NOT NULL DEFAULT 1,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- Keyset pagination (created_at, id), with or without a stage filter.
CREATE INDEX leads_by_created ON leads (created_at, id);
CREATE INDEX leads_by_stage ON leads (stage, created_at, id);
CREATE INDEX leads_by_first_campaign ON leads ((first_touch ->> 'campaign_id'));
CREATE INDEX leads_by_last_campaign ON leads ((last_touch ->> 'campaign_id'));

-- Every form submission of a lead: a touch plus the profile answers it carried.
CREATE TABLE touches (
    id           bigserial PRIMARY KEY,
    lead_id      uuid NOT NULL REFERENCES leads (id),
    event_id     uuid NOT NULL UNIQUE,  -- the form_submission event
    occurred_at  timestamptz NOT NULL,
    form_id      text,
    campaign_id  text,                  -- utm.campaign
    channel      text,                  -- utm.medium
    source       text,
    term         text,
    content      text,
    page_url     text,
    name         text,
    company      text,
    phone        text,
    fields       jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX touches_by_lead ON touches (lead_id, occurred_at);

-- Stage history: the first row (from_stage NULL) is the lead's creation.
CREATE TABLE stage_history (
    id           bigserial PRIMARY KEY,
    lead_id      uuid NOT NULL REFERENCES leads (id),
    from_stage   text,
    to_stage     text NOT NULL,
    reason       text,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX stage_history_by_lead ON stage_history (lead_id, occurred_at, id);
