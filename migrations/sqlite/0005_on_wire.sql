-- A claimed row ('sending') is on the wire once its message may reach the
-- server: set (and committed) before the end of its DATA, cleared with its
-- outcome. After a crash only such rows may have been delivered without
-- being recorded; claimed rows that never started go back to the queue
-- without counting as possible duplicates.
ALTER TABLE deliveries ADD COLUMN on_wire INTEGER NOT NULL DEFAULT 0;
