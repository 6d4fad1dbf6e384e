-- Issue 29 (fleet revert, first step): what each job's host ran when the job was made, and the
-- release of that version on the channel when it was uploaded: what a revert goes back to.
-- Captured then, as later polls overwrite the instance's row.
ALTER TABLE update_jobs
    ADD COLUMN previous_version text,
    ADD COLUMN previous_release_id text;
