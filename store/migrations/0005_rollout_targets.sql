-- Each rollout's targets, snapshotted when it starts: the workflow reads one batch at a time
-- instead of carrying a list that grows with the fleet (Temporal payloads stop at 2 MiB).
-- Positions run from 1 in instance-id order; batch n is positions (n-1)*size+1 .. n*size.
CREATE TABLE rollout_targets (
    rollout_id  text NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    position    integer NOT NULL CHECK (position >= 1),
    instance_id text NOT NULL,
    PRIMARY KEY (rollout_id, position)
);
