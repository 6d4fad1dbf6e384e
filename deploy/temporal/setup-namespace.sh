#!/bin/sh
# Registers the namespace and the Keyword search attributes the rollout workflows upsert;
# without them every rollout workflow task fails ("search attribute ... is not defined").
# Safe to re-run: an existing namespace is kept and an existing attribute is skipped.
# Env: TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, KEYWORD_SEARCH_ATTRIBUTES (space-separated),
# NAMESPACE_RETENTION (default 30d), SETUP_ATTEMPTS (default 30), SETUP_RETRY_SECONDS (default 2).
set -eu
: "${TEMPORAL_ADDRESS:?TEMPORAL_ADDRESS is not set}"
: "${TEMPORAL_NAMESPACE:?TEMPORAL_NAMESPACE is not set}"
: "${KEYWORD_SEARCH_ATTRIBUTES:?KEYWORD_SEARCH_ATTRIBUTES is not set}"
retention=${NAMESPACE_RETENTION:-30d}
attempts=${SETUP_ATTEMPTS:-30}
pause=${SETUP_RETRY_SECONDS:-2}

# A freshly started server, or a namespace created a moment ago, takes a few seconds to be
# visible to every frontend call: retry each step instead of failing the whole setup.
retry() {
    attempt=1
    until "$@"; do
        if [ "$attempt" -ge "$attempts" ]; then
            echo "giving up after $attempts attempts: $*" >&2
            return 1
        fi
        attempt=$((attempt + 1))
        sleep "$pause"
    done
}

echo "waiting for Temporal at $TEMPORAL_ADDRESS"
retry temporal operator cluster health --address "$TEMPORAL_ADDRESS"

if temporal operator namespace describe --address "$TEMPORAL_ADDRESS" \
    --namespace "$TEMPORAL_NAMESPACE" >/dev/null 2>&1; then
    echo "namespace $TEMPORAL_NAMESPACE exists"
else
    echo "creating namespace $TEMPORAL_NAMESPACE (retention $retention)"
    retry temporal operator namespace create --address "$TEMPORAL_ADDRESS" \
        --namespace "$TEMPORAL_NAMESPACE" --retention "$retention"
fi

set --
for name in $KEYWORD_SEARCH_ATTRIBUTES; do
    set -- "$@" --name "$name" --type Keyword  # the CLI pairs each --name with a --type
done
echo "registering Keyword search attributes: $KEYWORD_SEARCH_ATTRIBUTES"
retry temporal operator search-attribute create --address "$TEMPORAL_ADDRESS" \
    --namespace "$TEMPORAL_NAMESPACE" "$@"
temporal operator search-attribute list --address "$TEMPORAL_ADDRESS" \
    --namespace "$TEMPORAL_NAMESPACE"
