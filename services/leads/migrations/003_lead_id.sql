-- The lead's key is `lead_id` in every service, its events and its API.
ALTER TABLE leads RENAME COLUMN id TO lead_id;
