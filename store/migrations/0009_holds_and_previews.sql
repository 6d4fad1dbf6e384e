-- Issue 26: an operator holds a host out of new rollouts' targets (with a reason, until
-- released); its running jobs are not touched.
ALTER TABLE instances
    ADD COLUMN held_at timestamptz,
    ADD COLUMN hold_reason text,
    ADD COLUMN held_by text;

-- A preview's targets, in batch order (POST /api/rollouts/preview): a rollout created from it
-- takes exactly these (store.rollout_targets), or is refused naming what changed. Kept a day.
CREATE TABLE rollout_previews (
    id text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    release_id text NOT NULL REFERENCES releases (id),
    channel text NOT NULL,
    instance_ids text[] NOT NULL
);
CREATE INDEX rollout_previews_created_at ON rollout_previews (created_at);
ALTER TABLE rollouts
    ADD COLUMN preview_id text,
    -- How the targets are cut into batches (domain.plans.BatchPlan); NULL: batch_size a batch.
    ADD COLUMN plan jsonb;
