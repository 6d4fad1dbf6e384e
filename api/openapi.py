"""Error answers as the API really gives them, declared once for /openapi.json.

Clients and fuzzers are generated from the schema, so every error a route can answer is
listed with the shape it has: `detail` is always a string naming what is wrong.
"""

from typing import Any

from pydantic import BaseModel, Field

from api.middleware.edge import ADMIN_MAX_BODY_BYTES
from contract.wire import AGENT_SIGNATURE_HEADER, MAX_BODY_BYTES, AgentRequest

Responses = dict[int | str, dict[str, Any]]


class ErrorOut(BaseModel):
    detail: str = Field(description="What is wrong, readable in a terminal")


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    errors: list[ValidationProblem] | None = Field(
        default=None,
        description="For request-shape errors: each problem, for programs",
    )


class SignedErrorOut(ErrorOut):
    nonce: str | None = Field(
        default=None, description="The request's nonce, when it had a well-formed one"
    )


def _error(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"model": model, "description": description}


_UNAVAILABLE = (
    "PostgreSQL (or, for actions, Temporal) is unavailable; `Retry-After` says when to try again"
)


def admin_errors() -> Responses:
    """What every admin route can answer besides its own outcome."""
    return {
        401: _error(ErrorOut, "`x-cp-admin-token` missing or wrong (checked before the body)"),
        413: _error(ErrorOut, f"the body is larger than {ADMIN_MAX_BODY_BYTES} bytes"),
        422: _error(ValidationErrorOut, "a malformed parameter or body; `detail` names it"),
        503: _error(ErrorOut, _UNAVAILABLE),
    }


def agent_errors() -> Responses:
    """Agent routes: every answer whose instance is known is signed (`x-cp-signature`)."""
    return {
        401: _error(SignedErrorOut, "bad or missing signature, stale `sentAt`, replayed nonce"),
        413: _error(ErrorOut, f"the body is larger than {MAX_BODY_BYTES} bytes"),
        422: _error(SignedErrorOut, "a malformed body; `detail` names the field"),
        503: _error(SignedErrorOut, _UNAVAILABLE.replace("for actions", "for jobs")),
    }


def not_found() -> Responses:
    return {404: _error(ErrorOut, "no such id")}


def conflict() -> Responses:
    return {409: _error(ErrorOut, "the request contradicts the current state; `detail` says why")}


def signed_body(model: type[AgentRequest]) -> dict[str, Any]:
    """The request body and signature header of an agent route, which reads its raw body.

    The route cannot declare the body as a parameter (the signature covers the exact bytes),
    so the schema is written here from the same model that validates it.
    """
    return {
        "parameters": [
            {
                "name": AGENT_SIGNATURE_HEADER,
                "in": "header",
                "required": True,
                # In backticks: /docs and /redoc render Markdown, where `<...>` is an HTML tag.
                "description": "`hmac_sha256(secret, body)` over the exact body bytes,"
                " in lowercase hex",
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
    }
