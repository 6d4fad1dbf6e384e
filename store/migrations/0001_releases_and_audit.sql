CREATE TABLE releases (
    id                  text PRIMARY KEY,
    version             text NOT NULL,
    channel             text NOT NULL,
    sha                 text NOT NULL,
    migrations_required boolean NOT NULL,
    breaking_changes    text,
    released_at         text NOT NULL,
    signature           text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (version, channel)
);

CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    subject     text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_subject ON audit_log (subject, at);
