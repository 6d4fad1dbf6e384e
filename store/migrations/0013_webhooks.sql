-- Issue 28: signed webhooks (Standard Webhooks). An endpoint names the events it wants; every
-- audit entry (rollout status changes, freezes, ...) and every failed job report that one of
-- them wants becomes a delivery in the same transaction as the change (the outbox), sent by the
-- API's dispatcher (services/webhook_dispatcher.py) with retries.
CREATE TABLE webhook_endpoints (
    id text PRIMARY KEY,
    url text NOT NULL,
    secret text NOT NULL,
    events text[] NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_deliveries (
    id text PRIMARY KEY,
    endpoint_id text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status int,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_listed ON webhook_deliveries (created_at DESC);

CREATE FUNCTION webhook_enqueue(event text, occurred timestamptz, source text, data jsonb)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, endpoint_id, event, payload)
    SELECT 'msg_' || source || '_' || e.id, e.id, event,
        jsonb_build_object('type', event, 'timestamp', occurred, 'data', data)
    FROM webhook_endpoints e WHERE event = ANY (e.events) OR '*' = ANY (e.events);
    IF FOUND THEN
        PERFORM pg_notify('webhook_outbox', '');
    END IF;
END $$;

CREATE FUNCTION webhook_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue(NEW.action, NEW.at, 'a' || NEW.id,
        jsonb_build_object('subject', NEW.subject, 'actor', NEW.actor, 'detail', NEW.detail));
    RETURN NULL;
END $$;
CREATE TRIGGER audit_log_webhooks AFTER INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION webhook_audit();

CREATE FUNCTION webhook_failed_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM webhook_enqueue('job.' || NEW.status, NEW.received_at, 'r' || NEW.id,
        jsonb_build_object('jobId', NEW.job_id, 'instanceId', NEW.instance_id,
            'status', NEW.status, 'step', NEW.step, 'message', NEW.message));
    RETURN NULL;
END $$;
CREATE TRIGGER job_reports_webhooks AFTER INSERT ON job_reports
    FOR EACH ROW WHEN (NEW.status IN ('failed', 'rolled_back', 'rollback_failed'))
    EXECUTE FUNCTION webhook_failed_job();
