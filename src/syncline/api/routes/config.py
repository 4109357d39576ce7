"""Validate a config document without running it."""

from __future__ import annotations

import json
from typing import Any

import yaml
from fastapi import APIRouter, Request
from pydantic import ValidationError

from syncline.api.auth import requires
from syncline.api.context import Ctx
from syncline.api.errors import ApiError
from syncline.api.models import ValidateResult
from syncline.config import PipelineConfig, format_validation_error, parse_config
from syncline.errors import ConfigError
from syncline.redact import dsn_passwords, redact_text

router = APIRouter(prefix="/api/v1", tags=["config"])

_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


def _document(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            return json.loads(text)
        except ValueError as exc:
            raise ApiError(422, f"body: invalid JSON: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return ValidateResult(valid=False, error=f"invalid YAML{where}: {problem}")


@router.post("/config/validate", response_model=ValidateResult, openapi_extra=_BODY)
@requires("viewer", "config.validate")
async def validate(request: Request, ctx: Ctx) -> ValidateResult:
    """Validate a whole config (a mapping with ``pipelines``) or one pipeline's config.

    JSON, or YAML with ``Content-Type: application/yaml``. ``${VAR}`` references are
    not resolved (the server's environment is not the caller's). Always 200: ``valid``
    says whether the document would load, ``error`` what is wrong, in one line.
    """
    doc = _document(await request.body(), request.headers.get("content-type", ""))
    if isinstance(doc, ValidateResult):
        return doc
    secrets = ctx.secrets() | dsn_passwords(_strings(doc))
    try:
        if isinstance(doc, dict) and "pipelines" in doc:
            cfg = parse_config(doc, "config")
            return ValidateResult(valid=True, pipelines=[p.name for p in cfg.pipelines])
        try:
            one = PipelineConfig.model_validate(doc)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "pipeline")) from None
        return ValidateResult(valid=True, pipelines=[one.name])
    except ConfigError as exc:
        return ValidateResult(valid=False, error=redact_text(str(exc), secrets))


def _strings(doc: Any) -> list[str]:
    if isinstance(doc, dict):
        return [s for v in doc.values() for s in _strings(v)]
    if isinstance(doc, list):
        return [s for v in doc for s in _strings(v)]
    return [doc] if isinstance(doc, str) else []
