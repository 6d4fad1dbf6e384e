-- Fleet revert (issue 29): a rollout that takes the hosts another one updated back to the
-- release each ran before.
ALTER TABLE rollouts
    -- The rollout this one reverts, and on the reverted one, the rollout reverting it.
    ADD COLUMN revert_of text REFERENCES rollouts (id),
    ADD COLUMN reverted_by text REFERENCES rollouts (id) ON DELETE SET NULL,
    -- How data written by the reverted release comes back (services/reverts.py):
    -- 'agent' (UPDATE_RESTORE_CMD on each host), 'manual' or 'not_needed', with the operator's
    -- words; required when the reverted release had migrations_required.
    ADD COLUMN restore text CHECK (restore IN ('agent', 'manual', 'not_needed')),
    ADD COLUMN restore_note text,
    -- Set when it was created during a fleet freeze: the operator's audited reason. Freezes do
    -- not hold it.
    ADD COLUMN freeze_override text,
    -- autoRevert: revert the hosts it updated when it is aborted or a health gate fails, their
    -- data coming back as auto_revert_restore says.
    ADD COLUMN auto_revert boolean NOT NULL DEFAULT false,
    ADD COLUMN auto_revert_restore text
        CHECK (auto_revert_restore IN ('agent', 'manual', 'not_needed'));

-- Each host of a revert and the release it goes back to, fixed when the revert is created and
-- kept: the snapshot of targets is made from it, and each job's release is read from it.
CREATE TABLE revert_targets (
    rollout_id  text NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    instance_id text NOT NULL,
    release_id  text NOT NULL REFERENCES releases (id),
    PRIMARY KEY (rollout_id, instance_id)
);

-- Whether the instance's agent declares, on its polls, that it checks downgrade permissions
-- (capability "downgrade"): only such hosts are sent a revert's jobs.
ALTER TABLE instances ADD COLUMN accepts_downgrade boolean NOT NULL DEFAULT false;

-- The release a job installs when it is not its rollout's (a revert's job); NULL: the rollout's.
ALTER TABLE update_jobs ADD COLUMN release_id text REFERENCES releases (id);
