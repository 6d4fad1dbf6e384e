-- Issue 25: a job the control plane ended (cancelled, timed_out, unreachable) may still have
-- run on its host. The agent stops when a report of it is refused for that, rolls back and
-- sends its final report, which is recorded here as what the host ended on (and appended to
-- job_reports, for the job's timeline); the job's status stays the control plane's decision.
ALTER TABLE update_jobs
    ADD COLUMN host_outcome text,
    ADD COLUMN host_step text;
