-- How a worker's run ended (tidings status tells finished, stopped and dead
-- workers apart): the time it exited and why (finished, interrupted,
-- paused, limit, stopped: …). NULL while it runs or if it died.
ALTER TABLE campaign_workers ADD COLUMN exited_at INTEGER;
ALTER TABLE campaign_workers ADD COLUMN exit_reason TEXT;
