-- Every agent report as received, append-only: the durable record behind a 2xx.
CREATE TABLE job_reports (
    id          bigserial PRIMARY KEY,
    job_id      text NOT NULL,
    instance_id text NOT NULL,
    status      text NOT NULL,
    step        text,
    message     text,
    nonce       text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX job_reports_job ON job_reports (job_id, id);
