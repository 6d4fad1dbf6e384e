-- Issue 27: a channel's default maintenance window, taken by each rollout created on it without
-- a window of its own (domain.windows.MaintenanceWindow as JSON).
CREATE TABLE channel_windows (
    channel text PRIMARY KEY,
    maintenance_window jsonb NOT NULL,
    set_by text NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now()
);

-- Each rollout's own window (its channel's, when created without one) and whether it takes
-- hosts that join late; both also travel in its workflow's input.
ALTER TABLE rollouts
    ADD COLUMN maintenance_window jsonb,
    ADD COLUMN include_late_joiners boolean NOT NULL DEFAULT false;
