#!/bin/sh
# Creates Temporal's two databases and brings their schemas to the version this server image
# ships (what the deprecated auto-setup image did at every start). Safe to re-run: `create`
# ignores an existing database, `setup-schema -v 0.0` skips a database already past 0.0 and
# `update-schema` applies only the versions a database lacks, so a newer image upgrades in place.
# Connection settings come from SQL_PLUGIN, SQL_HOST, SQL_PORT, SQL_USER, SQL_PASSWORD.
set -eu
: "${SQL_HOST:?SQL_HOST is not set}"
: "${SQL_USER:?SQL_USER is not set}"
: "${SQL_PASSWORD:?SQL_PASSWORD is not set}"
SQL_PLUGIN=${SQL_PLUGIN:-postgres12}
SQL_PORT=${SQL_PORT:-5432}
export SQL_PLUGIN SQL_PORT
schema_root=/etc/temporal/schema/postgresql/v12

for pair in temporal:temporal temporal_visibility:visibility; do
    database=${pair%%:*}
    schema=${pair#*:}
    echo "setting up database $database ($schema schema)"
    temporal-sql-tool --db "$database" create
    temporal-sql-tool --db "$database" setup-schema -v 0.0
    temporal-sql-tool --db "$database" update-schema -d "$schema_root/$schema/versioned"
done
echo "Temporal schema is up to date"
