"""Reads rollouts and their jobs through the admin API (CONTROL_PLANE_ADMIN_TOKEN)."""

from typing import Any

import httpx

# Enough for one rollout's jobs in one answer (the API caps `limit` at 10 000).
JOBS_LIMIT = 10_000


class RolloutApiError(Exception):
    pass


class RolloutReader:
    def __init__(self, base_url: str, admin_token: str) -> None:
        self.client = httpx.AsyncClient(
            base_url=base_url, headers={"x-cp-admin-token": admin_token}, timeout=30
        )

    async def _get(self, path: str, **params: Any) -> Any:
        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise RolloutApiError(f"GET {path}: {type(exc).__name__}: {exc}") from exc
        if not response.is_success:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RolloutApiError(f"GET {path}: HTTP {response.status_code}: {detail}")
        return response.json()

    async def rollout(self, rollout_id: str) -> dict[str, Any]:
        """The rollout without its jobs (`jobs()` has them): the same cost at any rollout age."""
        return await self._get(f"/api/rollouts/{rollout_id}", jobs="none")

    async def jobs(self, rollout_id: str) -> list[dict[str, Any]]:
        return await self._get("/api/updates/jobs", rolloutId=rollout_id, limit=JOBS_LIMIT)

    async def aclose(self) -> None:
        await self.client.aclose()
