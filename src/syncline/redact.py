"""Keep secrets out of logs, API responses and error messages.

One place that knows what a secret looks like: the password of a connection string
(URL ``scheme://user:password@host`` or libpq ``key=value`` form, ``password`` and
``sslpassword``) and config keys that name a secret (``password``, ``token``, …).
Values given to ``redact_text`` as known secrets (the passwords of the loaded
config, the API tokens) are replaced wherever they appear, which also catches a
driver quoting a DSN back in its error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

MASK = "***"

# scheme://user:password@host — the password runs to the last "@" before the host part
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#\s]*):[^/?#\s]*@")
# ?password=… / &sslpassword=… in a URL's query
_URL_QUERY = re.compile(r"(?P<head>[?&](?:ssl)?password=)[^&#\s]*", re.IGNORECASE)
# password=… in a libpq key=value string (value bare or single-quoted with \\ escapes)
_KEYWORD = re.compile(
    r"(?P<head>\b(?:ssl)?password\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'&]+)", re.IGNORECASE
)
_SECRET_KEY = re.compile(
    r"^(?:password|passwd|sslpassword|secret|token|api_key|apikey|private_key)$"
    r"|_(?:password|secret|token)$",
    re.IGNORECASE,
)


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, in whichever form it was written."""
    return redact_text(dsn)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with DSN passwords and the given secret values replaced by ``***``."""
    out = _URL_USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)
    out = _URL_QUERY.sub(lambda m: f"{m.group('head')}{MASK}", out)
    out = _KEYWORD.sub(lambda m: f"{m.group('head')}{MASK}", out)
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out


def is_secret_key(name: str) -> bool:
    """Config keys whose value is a secret itself (``token_env`` names a variable: not one)."""
    return bool(_SECRET_KEY.search(name))


def redact_config(value: Any, secrets: Iterable[str] = ()) -> Any:
    """A copy of a config document (dicts, lists, scalars) without secrets."""
    known = tuple(secrets)
    if isinstance(value, Mapping):
        return {
            k: (MASK if is_secret_key(str(k)) and v else redact_config(v, known))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_config(v, known) for v in value]
    if isinstance(value, str):
        return redact_text(value, known)
    return value


def dsn_passwords(dsns: Iterable[str]) -> set[str]:
    """The passwords written in ``dsns`` (to scrub them from text that quotes them)."""
    found: set[str] = set()
    for dsn in dsns:
        for m in re.finditer(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^:@/?#\s]*:(?P<pw>[^/?#\s]*)@", dsn):
            found.update((m.group("pw"), unquote(m.group("pw"))))
        for m in re.finditer(r"[?&](?:ssl)?password=(?P<pw>[^&#\s]*)", dsn, re.IGNORECASE):
            found.update((m.group("pw"), unquote(m.group("pw"))))
        for m in re.finditer(
            r"\b(?:ssl)?password\s*=\s*(?:'(?P<q>(?:[^'\\]|\\.)*)'|(?P<pw>[^\s'&]+))",
            dsn,
            re.IGNORECASE,
        ):
            pw = m.group("q") if m.group("q") is not None else m.group("pw")
            found.add(pw.replace("\\'", "'").replace("\\\\", "\\"))
    return {p for p in found if p}
