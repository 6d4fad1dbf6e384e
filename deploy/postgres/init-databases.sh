#!/bin/sh
# Runs once, when the postgres container initialises an empty data directory
# (/docker-entrypoint-initdb.d). One server, two owners: Temporal's role may create its own
# databases (temporal, temporal_visibility) but cannot read the control plane's, and the
# control plane's role owns only `rollout`. Passwords go in as psql variables, never as SQL text.
set -eu
: "${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD is not set}"
: "${ROLLOUT_DB_PASSWORD:?ROLLOUT_DB_PASSWORD is not set}"

psql --set ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set temporal_password="$TEMPORAL_DB_PASSWORD" \
    --set rollout_password="$ROLLOUT_DB_PASSWORD" <<'SQL'
CREATE ROLE temporal LOGIN CREATEDB PASSWORD :'temporal_password';
CREATE ROLE rollout LOGIN PASSWORD :'rollout_password';
CREATE DATABASE rollout OWNER rollout;
REVOKE ALL ON DATABASE rollout FROM PUBLIC;
SQL
