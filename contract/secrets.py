"""The one rule for shared secrets, used by the API's settings and by `rollout agent --check`.

Pure (no pydantic_settings) so the agent, which installs without the server's dependencies,
refuses exactly what the control plane refuses.
"""

MIN_SECRET_LENGTH = 16
# Values people paste from examples; a secret holding fleet-wide power must not be one of them.
_PLACEHOLDERS = frozenset({"changeme", "secret", "password", "admin", "token", "dev"})
# The example env files' own placeholders ("change-me-to-a-long-random-secret") start like this.
_PLACEHOLDER_PREFIX = "changeme"


def _folded(value: str) -> str:
    return value.lower().replace("-", "").replace("_", "")


def weak_secret_problem(name: str, value: str) -> str | None:
    """A one-line problem naming `name` (never the value) when `value` is weak, else None."""
    folded = _folded(value)
    if folded in _PLACEHOLDERS or folded.startswith(_PLACEHOLDER_PREFIX):
        return f"{name} is a placeholder; " + _HOW_TO_GENERATE
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} is shorter than {MIN_SECRET_LENGTH} characters; " + _HOW_TO_GENERATE
    return None


_HOW_TO_GENERATE = "generate one with: python3 -c 'import secrets; print(secrets.token_hex(32))'"
