-- Issue 14: hosts that never started their job by its deadline (`unreachable`) have their own
-- limit. Rollouts created before it get 0, the default, which is what they did: their
-- unreachable hosts timed out and counted against max_failures, whose default is 0 too.
-- Job statuses are not constrained in SQL (the workflow is their source of truth), so the new
-- `unreachable` status needs no change here.
ALTER TABLE rollouts
    ADD COLUMN max_unreachable integer NOT NULL DEFAULT 0 CHECK (max_unreachable >= 0);
