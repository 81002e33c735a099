-- Shared goals (PUT /v1/goals/{goal_id}): state metrics owns, not a projection of events, so
-- they live in a schema of their own that rebuilding the projection never touches (a rebuild
-- makes a fresh `metrics_rebuild` and renames it to `public`): goals come through it as
-- they are, and a goal written during a rebuild is never lost to the replaced schema.
-- Every rebuild applies this file again (in its own schema), so it must stay idempotent, as
-- must any later change to `metrics_state`.
CREATE SCHEMA IF NOT EXISTS metrics_state;

CREATE TABLE IF NOT EXISTS metrics_state.goals (
    goal_id      uuid PRIMARY KEY,
    name         text NOT NULL,
    team         text NOT NULL,
    metric       text NOT NULL,
    target       numeric(20, 2) NOT NULL,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    campaign_id  text,
    channel      text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS goals_listed ON metrics_state.goals (created_at, goal_id);

-- Bumped by every change to a goal: part of the goals' ETags.
CREATE TABLE IF NOT EXISTS metrics_state.goals_version (
    id       smallint PRIMARY KEY CHECK (id = 1),
    version  bigint NOT NULL DEFAULT 0
);
INSERT INTO metrics_state.goals_version (id) VALUES (1) ON CONFLICT DO NOTHING;
