-- What a lead's submissions add up to (domain.LeadSummary: earliest and newest touch, the
-- newest answer per profile item, the forms submitted, the touch count). A new submission
-- merges into it instead of re-reading every touch of the lead, so its cost no longer grows
-- with the lead's touches. NULL for leads stored before it: the next submission rebuilds it
-- once from the touches.
ALTER TABLE leads ADD COLUMN summary jsonb;
