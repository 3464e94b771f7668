-- Several senders on one PostgreSQL (tidings send --worker-id): who takes
-- part in a campaign, and the campaign's shared send schedule.
CREATE TABLE campaign_workers (
    campaign_id BIGINT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    worker TEXT NOT NULL,
    -- host:pid of the process using this worker id now
    process TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, worker)
);
-- The next free send slot (Unix microseconds): workers reserve slots from
-- here, so their total rate is the configured one however many there are.
ALTER TABLE campaigns ADD COLUMN next_slot_us BIGINT NOT NULL DEFAULT 0;
