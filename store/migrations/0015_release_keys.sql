-- Issue 30: a manifest's optional expiry and its release-key signatures (contract/release_keys.py),
-- stored as uploaded: hosts verify them, so they travel with every job of the release.
ALTER TABLE releases
    ADD COLUMN expires_at text,
    ADD COLUMN key_signatures jsonb;
