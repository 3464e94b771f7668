-- One time representation in the database: Unix milliseconds, as the
-- journal and the bounces keep it. The subscriber tables kept RFC 3339
-- text.
ALTER TABLE subscribers
    ALTER COLUMN created_at TYPE BIGINT
        USING (EXTRACT(EPOCH FROM created_at::timestamptz) * 1000)::BIGINT,
    ALTER COLUMN updated_at TYPE BIGINT
        USING (EXTRACT(EPOCH FROM updated_at::timestamptz) * 1000)::BIGINT,
    ALTER COLUMN unsubscribed_at TYPE BIGINT
        USING (EXTRACT(EPOCH FROM unsubscribed_at::timestamptz) * 1000)::BIGINT;
ALTER TABLE suppressions
    ALTER COLUMN created_at TYPE BIGINT
        USING (EXTRACT(EPOCH FROM created_at::timestamptz) * 1000)::BIGINT;
ALTER TABLE subscriber_events
    ALTER COLUMN at TYPE BIGINT
        USING (EXTRACT(EPOCH FROM at::timestamptz) * 1000)::BIGINT;
