-- Issue 24: a job stores a bounded number of reports, and its first final report fixes its
-- outcome and step for good (store.jobs._APPLY_REPORT). Both are kept on the job's row, which
-- the report's statement updates anyway: no count over job_reports, no extra round trip.
ALTER TABLE update_jobs
    ADD COLUMN reports_stored integer NOT NULL DEFAULT 0,
    ADD COLUMN final_reported boolean NOT NULL DEFAULT false;

-- Jobs that already have reports: counted from what they stored.
UPDATE update_jobs j SET reports_stored = r.n, final_reported = r.final
    FROM (SELECT job_id, count(*)::integer AS n, bool_or(status <> 'in_progress') AS final
            FROM job_reports GROUP BY job_id) r
    WHERE j.id = r.job_id;
