"""The permission to go down (docs/protocol.md, "Fleet revert"): agents refuse a release that is
not newer than what they run, unless its job carries this, signed by the control plane for
exactly that job, that host, that version change and that release.

Signed like every agent message (PROTOCOL §1): HMAC-SHA256 with the instance's secret over the
canonical JSON of the permission without `signature`. `purpose` keeps a permission from being
any other signed document. A permission is good for one job until its deadline, so a copy lifted
from one job's answer is refused on another job, another host, another version or later.
"""

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contract.manifest import ReleaseManifest, parse_timestamp
from contract.signing import canonical, sign, verify

# How the data the reverted release wrote comes back: each host's UPDATE_RESTORE_CMD with the
# backup its agent journalled (`agent`), the operator's own procedure (`manual`), or not at all
# because the old release reads the new data (`not_needed`). Required when it ran migrations.
RestoreMode = Literal["agent", "manual", "not_needed"]


class DowngradePermission(BaseModel):
    # Fields a later control plane adds are kept, and signed over like the rest: an agent that
    # does not know one still checks the signature over every field it was sent.
    model_config = ConfigDict(extra="allow")

    purpose: Literal["downgrade"] = "downgrade"
    jobId: str
    instanceId: str
    fromVersion: str  # what the host ran when the job was made
    toVersion: str  # the job's release: its `version` and `sha`
    sha: str
    # How the reverted release's data comes back: `agent` runs UPDATE_RESTORE_CMD with the backup
    # the host took before it went up to `fromVersion`; None, `manual`, `not_needed`: no step.
    restore: RestoreMode | None = None
    expiresAt: str  # the job's deadline
    signature: str = Field(pattern=r"^[0-9a-f]{64}$")

    @classmethod
    def issue(
        cls,
        secret: str,
        *,
        job_id: str,
        instance_id: str,
        from_version: str,
        manifest: ReleaseManifest,
        restore: RestoreMode | None,
        expires_at: str,
    ) -> "DowngradePermission":
        fields = {
            "purpose": "downgrade",
            "jobId": job_id,
            "instanceId": instance_id,
            "fromVersion": from_version,
            "toVersion": manifest.version,
            "sha": manifest.sha,
            "restore": restore,
            "expiresAt": expires_at,
        }
        return cls.model_validate({**fields, "signature": sign(secret, canonical(fields))})

    def refusal(
        self,
        secret: str,
        *,
        job_id: str,
        instance_id: str,
        current_version: str,
        manifest: ReleaseManifest,
    ) -> str | None:
        """Why a host must not act on this permission for this job, or None: the signature
        first (constant-time), then each binding."""
        signed = canonical(self.model_dump(exclude={"signature"}))
        if not verify(secret, signed, self.signature):
            return "its signature does not match (not signed by the control plane for this host)"
        bindings = (
            ("job", self.jobId, job_id),
            ("host", self.instanceId, instance_id),
            ("current version", self.fromVersion, current_version),
            ("target version", self.toVersion, manifest.version),
            ("release sha", self.sha, manifest.sha),
        )
        for what, permitted, actual in bindings:
            if permitted != actual:
                return f"it is for {what} {permitted}, not {actual}"
        if parse_timestamp(self.expiresAt) <= datetime.now(UTC):
            return f"it expired at {self.expiresAt}"
        return None
