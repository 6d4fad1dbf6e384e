-- Issue 24: instances have a lifecycle an operator controls. `active`: polls are answered and
-- the host can be a rollout's target; `pending`: first seen with the fleet-wide token while
-- NEW_INSTANCES_NEED_APPROVAL is on, waiting for an admin; `decommissioned`: removed by an admin
-- (DELETE /api/instances/{id}), its polls refused until it is admitted again. Rows stay, so an
-- id's history (audit, jobs) keeps its subject.
ALTER TABLE instances
    ADD COLUMN state text NOT NULL DEFAULT 'active'
        CHECK (state IN ('active', 'pending', 'decommissioned')),
    ADD COLUMN state_changed_at timestamptz;
-- Few rows: the pending bound is counted from it, listings filter by it.
CREATE INDEX instances_not_active ON instances (state, instance_id) WHERE state <> 'active';

-- What a rollout left out of its targets when it started, and why (store.rollout_targets):
-- [{"reason": "stale", "count": 3, "instances": ["ghost-1", ...]}, ...], at most a few ids each.
ALTER TABLE rollouts ADD COLUMN left_out jsonb NOT NULL DEFAULT '[]'::jsonb;
