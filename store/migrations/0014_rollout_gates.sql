-- Issue 28: each rollout's health gates (domain.gates.Gate as JSON) and how often they are probed
-- through a bake; both also travel in its workflow's input.
ALTER TABLE rollouts
    ADD COLUMN gates jsonb NOT NULL DEFAULT '[]'::jsonb,
    ADD COLUMN gate_interval_seconds int NOT NULL DEFAULT 30;
