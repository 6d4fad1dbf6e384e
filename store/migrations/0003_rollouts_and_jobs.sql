-- Rollouts and their update jobs: the read model the rollout workflows keep current.
-- The workflow stays the source of truth; these rows answer listings and a down worker.
CREATE TABLE rollouts (
    id                  text PRIMARY KEY,
    workflow_id         text NOT NULL UNIQUE,
    manifest_id         text NOT NULL REFERENCES releases (id),
    version             text NOT NULL,
    channel             text NOT NULL,
    batch_size          integer NOT NULL CHECK (batch_size > 0),
    auto_advance        boolean NOT NULL,
    bake_seconds        integer NOT NULL CHECK (bake_seconds >= 0),
    max_failures        integer NOT NULL CHECK (max_failures >= 0),
    job_timeout_seconds integer NOT NULL CHECK (job_timeout_seconds > 0),
    status              text NOT NULL,
    paused_reason       text,
    current_batch       integer NOT NULL DEFAULT 0,
    total_batches       integer NOT NULL DEFAULT 0,
    target_count        integer NOT NULL DEFAULT 0,
    details             text NOT NULL DEFAULT '',
    created_by          text NOT NULL,
    -- Bumped by every write of the workflow: an older write never overwrites a newer one.
    revision            bigint NOT NULL DEFAULT 0,
    -- The workflow has returned: this row is final and needs no live query.
    workflow_closed     boolean NOT NULL DEFAULT false,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz
);
-- One unfinished rollout per channel: two concurrent creates cannot both insert.
CREATE UNIQUE INDEX rollouts_one_unfinished_per_channel ON rollouts (channel)
    WHERE status NOT IN ('completed', 'aborted');
CREATE INDEX rollouts_by_created ON rollouts (created_at DESC, id);

CREATE TABLE update_jobs (
    id          text PRIMARY KEY,
    rollout_id  text NOT NULL REFERENCES rollouts (id),
    instance_id text NOT NULL,
    batch       integer NOT NULL CHECK (batch >= 1),
    attempt     integer NOT NULL CHECK (attempt >= 1),
    status      text NOT NULL,
    step        text,
    message     text,
    deadline    timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX update_jobs_open_by_instance ON update_jobs (instance_id)
    WHERE status IN ('pending', 'in_progress');
CREATE INDEX update_jobs_by_rollout ON update_jobs (rollout_id, batch, instance_id, attempt);
CREATE INDEX update_jobs_by_status ON update_jobs (status, created_at);
