-- Issue 27: a channel's default maintenance window, taken by each rollout created on it without
-- a window of its own (domain.windows.MaintenanceWindow as JSON).
CREATE TABLE channel_windows (
    channel text PRIMARY KEY,
    maintenance_window jsonb NOT NULL,
    set_by text NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now()
);
