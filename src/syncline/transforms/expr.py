"""The expression language of ``filter``, ``compute`` and ``add_fields``.

Expressions come from a config file, so they are never handed to ``eval`` as
Python: the text is parsed with ``ast``, every node is checked against a short
whitelist (anything else is refused at config load, naming the construct), bare
names are rewritten into lookups in the row, and the checked tree is compiled
once into a function that runs with empty ``__builtins__``. What remains can
compute, compare and call a fixed set of pure functions, nothing else.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from typing import Any

from syncline.transforms.convert import (
    float_out,
    to_bool,
    to_decimal,
    to_float,
    to_int,
    to_str,
)

RESERVED = ("op", "before", "after", "table", "key")  # bound per event; shadow row fields
MAX_LENGTH = 4000
MAX_EXPONENT = 1000
_ROW = "__row"


def _nullable(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(v: Any, *args: Any) -> Any:
        return None if v is None else fn(v, *args)

    return call


def _text(v: Any) -> str:
    return v if type(v) is str else (to_str(v) or "")


def coalesce(*args: Any) -> Any:
    for a in args:
        if a is not None:
            return a
    return None


def concat(*args: Any) -> str:
    """Like SQL's concat(): nulls are skipped."""
    return "".join(_text(a) for a in args if a is not None)


def substr(s: Any, start: int, length: int | None = None) -> str | None:
    """SQL's substr: ``start`` counts from 1."""
    if s is None:
        return None
    text = _text(s)
    i = max(int(start) - 1, 0)
    return text[i:] if length is None else text[i : i + max(int(length), 0)]


def startswith(s: Any, prefix: str) -> bool:
    return s is not None and _text(s).startswith(prefix)


def endswith(s: Any, suffix: str) -> bool:
    return s is not None and _text(s).endswith(suffix)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def sha256(v: Any) -> str | None:
    """Hex SHA-256 of the value's text form (strings as they are, other values as JSON)."""
    return None if v is None else hashlib.sha256(_text(v).encode()).hexdigest()


def _round(v: Any, ndigits: int = 0) -> Any:
    if v is None:
        return None
    return round(v, ndigits) if ndigits else round(v)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lower": _nullable(lambda s: _text(s).lower()),
    "upper": _nullable(lambda s: _text(s).upper()),
    "trim": _nullable(lambda s: _text(s).strip()),
    "replace": _nullable(lambda s, old, new: _text(s).replace(old, new)),
    "len": _nullable(len),
    "str": to_str,
    "int": to_int,
    "float": to_float,
    "bool": to_bool,
    "decimal": to_decimal,
    "round": _round,
    "abs": _nullable(abs),
    "min": min,
    "max": max,
    "coalesce": coalesce,
    "concat": concat,
    "substr": substr,
    "startswith": startswith,
    "endswith": endswith,
    "now_iso": now_iso,
    "hash": sha256,
    "sha256": sha256,
}


def _mul(a: Any, b: Any) -> Any:
    if isinstance(a, str | list) or isinstance(b, str | list):
        raise TypeError(
            "cannot multiply text or lists (numeric columns arrive as text: "
            "use decimal(x) or float(x))"
        )
    return a * b


def _pow(a: Any, b: Any) -> Any:
    if isinstance(b, int) and abs(b) > MAX_EXPONENT:
        raise ValueError(f"exponent {b} is larger than {MAX_EXPONENT}")
    return a**b


def _mod(a: Any, b: Any) -> Any:
    if isinstance(a, str):
        raise TypeError("% on text is not allowed (use concat())")
    return a % b


_HELPERS: dict[str, Any] = {"__mul": _mul, "__pow": _pow, "__mod": _mod}
_REWRITTEN_OPS: dict[type[ast.operator], str] = {
    ast.Mult: "__mul",
    ast.Pow: "__pow",
    ast.Mod: "__mod",
}
_PLAIN_OPS = (ast.Add, ast.Sub, ast.Div, ast.FloorDiv)
_ALLOWED = (
    ast.Expression,
    ast.Constant,
    ast.Name,
    ast.Load,
    ast.BinOp,
    ast.UnaryOp,
    ast.UAdd,
    ast.USub,
    ast.Not,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.Compare,
    ast.Eq,
    ast.NotEq,
    ast.Lt,
    ast.LtE,
    ast.Gt,
    ast.GtE,
    ast.In,
    ast.NotIn,
    ast.Is,
    ast.IsNot,
    ast.IfExp,
    ast.Subscript,
    ast.Slice,
    ast.Call,
    ast.Tuple,
    ast.List,
    ast.Dict,
    ast.JoinedStr,
    ast.FormattedValue,
    *_PLAIN_OPS,
    *_REWRITTEN_OPS,
)
_REFUSED_NAMES: dict[type[ast.AST], str] = {
    ast.Lambda: "lambda",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "generator expression",
    ast.NamedExpr: "assignment (:=)",
    ast.Starred: "*unpacking",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Set: "set literal",
}


def _refuse(node: ast.AST, what: str, hint: str = "") -> ValueError:
    col = getattr(node, "col_offset", None)
    where = f" (at column {col + 1})" if col is not None else ""
    return ValueError(f"{what} is not allowed{where}{hint}")


class _Checker(ast.NodeVisitor):
    """Refuses every construct outside the whitelist; collects the row fields named."""

    def __init__(self) -> None:
        self.fields: list[str] = []
        self.uses_decimal = False

    def generic_visit(self, node: ast.AST) -> None:
        if not isinstance(node, _ALLOWED):
            if isinstance(node, ast.Attribute):
                raise _refuse(node, f"attribute access (.{node.attr})")
            name = _REFUSED_NAMES.get(type(node))
            if name is None:
                name = f"the {type(node).__name__} construct"
            raise _refuse(node, name)
        super().generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if not (node.value is None or isinstance(node.value, str | int | float | bool)):
            raise _refuse(node, f"the constant {node.value!r}")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id.startswith("__"):
            raise _refuse(node, f"the name {node.id}")
        if node.id not in RESERVED and node.id not in self.fields:
            self.fields.append(node.id)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Attribute):
            raise _refuse(node.func, f"attribute access (.{node.func.attr})")
        if not isinstance(node.func, ast.Name):
            raise _refuse(node, "calling anything but a named function")
        name = node.func.id
        if name not in FUNCTIONS:
            allowed = ", ".join(sorted(FUNCTIONS))
            raise _refuse(node, f"the function {name}()", f"; available: {allowed}")
        if node.keywords:
            raise _refuse(node, f"keyword arguments to {name}()")
        self.uses_decimal |= name == "decimal"
        for arg in node.args:
            self.visit(arg)


class _Rewriter(ast.NodeTransformer):
    """Bare names → ``__row.get('name')``; ``*``, ``**``, ``%`` → guarded helpers."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node.args = [self.visit(a) for a in node.args]
        return node  # the function name stays a global lookup

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in RESERVED:
            return node
        get = ast.Attribute(ast.Name(_ROW, ast.Load()), "get", ast.Load())
        return ast.Call(get, [ast.Constant(node.id)], [])

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        helper = _REWRITTEN_OPS.get(type(node.op))
        if helper is None:
            return node
        return ast.Call(ast.Name(helper, ast.Load()), [node.left, node.right], [])


Evaluator = Callable[[dict[str, Any], str, Any, Any, str, Any], Any]
_DECIMAL_CONTEXT = Context(prec=78)


@dataclass(frozen=True, slots=True)
class Expr:
    """A checked, compiled expression: ``fn(row, op, before, after, table, key)``."""

    text: str
    fields: tuple[str, ...]  # row fields named bare (checked against table columns)
    fn: Evaluator


def compile_expr(text: str) -> Expr:
    """Parse, check and compile ``text``; raises ``ValueError`` naming what is refused."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expression is empty")
    if len(text) > MAX_LENGTH:
        raise ValueError(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"invalid expression: {exc.msg} (at column {exc.offset})") from None
    except (RecursionError, MemoryError):
        raise ValueError("expression is nested too deeply") from None
    checker = _Checker()
    try:
        checker.visit(tree)
    except RecursionError:
        raise ValueError("expression is nested too deeply") from None
    body = _Rewriter().visit(tree).body
    params = [ast.arg(n) for n in (_ROW, *RESERVED)]
    args = ast.arguments(posonlyargs=[], args=params, kwonlyargs=[], kw_defaults=[], defaults=[])
    lam = ast.fix_missing_locations(ast.Expression(ast.Lambda(args, body)))
    env: dict[str, Any] = {"__builtins__": {}, **FUNCTIONS, **_HELPERS}
    try:
        fn: Evaluator = eval(compile(lam, "<expression>", "eval"), env)
    except (RecursionError, MemoryError, ValueError, SyntaxError):
        raise ValueError("expression is too large or nested too deeply") from None
    if checker.uses_decimal:
        fn = _with_decimal_context(fn)
    return Expr(text, tuple(checker.fields), fn)


def _with_decimal_context(fn: Evaluator) -> Evaluator:
    """decimal() arithmetic with 78 significant digits instead of the default 28."""

    def run(*args: Any) -> Any:
        with localcontext(_DECIMAL_CONTEXT):
            return fn(*args)

    return run


_JSON_SCALARS = (str, int, bool, type(None))


def json_value(v: Any) -> Any:
    """An expression result as an event value (Decimal → exact string, tuple → list)."""
    t = type(v)
    if t in _JSON_SCALARS:
        return v
    if t is float:
        return float_out(v)
    if t is Decimal:
        return to_str(v)
    if t is list or t is tuple:
        return [json_value(x) for x in v]
    if t is dict:
        return {str(k): json_value(x) for k, x in v.items()}
    raise TypeError(f"the result {v!r:.40} is not a JSON value")
