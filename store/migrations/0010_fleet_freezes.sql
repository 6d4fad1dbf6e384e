-- Issue 27: a fleet freeze stops the line: while a row is here no rollout on its channel ('*':
-- every channel) is created or advanced, and none hands out a pending job (services/freezes.py).
CREATE TABLE fleet_freezes (
    channel text PRIMARY KEY,
    reason text NOT NULL,
    frozen_by text NOT NULL,
    frozen_at timestamptz NOT NULL DEFAULT now()
);
