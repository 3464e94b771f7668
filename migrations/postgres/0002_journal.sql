-- The send journal: one campaign per send of an issue to an audience, one
-- delivery row per (campaign, recipient). Times are Unix milliseconds.
CREATE TABLE campaigns (
    id BIGSERIAL PRIMARY KEY,
    issue TEXT NOT NULL,
    -- 'all', 'list:<name>' or 'csv:<path>'
    audience TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    -- Messages that were in flight when an earlier run died: they may have
    -- been delivered, and are sent again.
    possible_duplicates BIGINT NOT NULL DEFAULT 0,
    paused_reason TEXT,
    -- The process sending it now, and until when its claim holds.
    runner TEXT,
    runner_until BIGINT
);
CREATE INDEX campaigns_issue ON campaigns (issue, id);

CREATE TABLE deliveries (
    campaign_id BIGINT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- Send order: the subscriber id, or the CSV line.
    seq BIGINT NOT NULL,
    email_key TEXT NOT NULL,
    email_hash TEXT NOT NULL,
    email TEXT NOT NULL,
    first_name TEXT NOT NULL DEFAULT '',
    last_name TEXT NOT NULL DEFAULT '',
    attributes TEXT NOT NULL DEFAULT '{}',
    -- pending | sending | sent | deferred | failed | skipped
    status TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_code BIGINT,
    last_error TEXT,
    sent_at BIGINT,
    message_id TEXT,
    worker TEXT,
    lease_until BIGINT,
    PRIMARY KEY (campaign_id, email_key)
);
-- The queue: pending rows in send order, deferred rows by due time.
CREATE INDEX deliveries_pending ON deliveries (campaign_id, status, seq);
CREATE INDEX deliveries_due ON deliveries (campaign_id, status, next_attempt_at);
