"""
Broadcast conditions: a safe subset of JavaScript expressions (spec 12.5).

MPush filters a broadcast GATEWAY_PUSH by evaluating its ``condition`` string
as JavaScript (Nashorn) once per connection.  Running user-supplied
JavaScript is out of the question here, so this module parses a small,
side-effect-free subset with its own tokenizer and recursive-descent parser
and evaluates the result as a tree of closures.  Nothing from the condition
text is ever handed to ``eval``, ``exec`` or ``compile``.  A condition is
compiled once per broadcast (`compile_condition`) and evaluated once per
connection (`Condition.matches`).

Variables
=========

``userId``, ``tags``, ``clientVersion``, ``osName``, ``osVersion``: the
connection's strings, or ``null`` when unset (a key missing from the mapping
is ``null`` too).  Any other identifier is a compile error, including
``undefined``, ``NaN``, ``Infinity``, ``this`` and every JavaScript global.

Grammar
=======

::

    condition   = or_expr END
    or_expr     = and_expr { "||" and_expr }
    and_expr    = equality { "&&" equality }
    equality    = relational { ( "==" | "!=" | "===" | "!==" ) relational }
    relational  = unary { ( "<" | "<=" | ">" | ">=" ) unary }
    unary       = { "!" | "-" } postfix
    postfix     = primary { "." member }
    member      = "length"
                | ( "toLowerCase" | "toUpperCase" ) "(" ")"
                | ( "indexOf" | "includes" | "startsWith" | "endsWith" )
                  "(" or_expr ")"
    primary     = STRING | NUMBER | "true" | "false" | "null"
                | VARIABLE | "(" or_expr ")"

Precedence, loosest first: ``||``, ``&&``, equality, relational, prefix
``!``/``-``, member access.  Binary operators associate to the left.

Tokens:

- ``STRING``: ``'...'`` or ``"..."`` on one line.  Escapes: ``\\\\``,
  ``\\'``, ``\\"``, ``\\n``, ``\\t``, ``\\r``; any other escape is an error.
- ``NUMBER``: ``DIGITS [ "." DIGITS ]`` with ASCII digits, no leading zero
  (``0`` and ``0.5`` are fine, ``007`` is rejected because Nashorn would read
  it as octal), no exponent, no hex; a number may not be followed directly
  by a name character (letter, ``_``, ``$``) or by a ``.`` without digits.
- ``VARIABLE`` / keywords: ASCII ``[A-Za-z_$][A-Za-z0-9_$]*``.
- Whitespace between tokens: JavaScript's (space, tab, LF, CR, VT, FF,
  U+FEFF, U+2028, U+2029 and Unicode space separators such as U+00A0).

Everything else is a compile error: assignment ``=``, ``+ * / %``, bitwise
operators, ``?:``, ``[ ]``, ``{ }``, ``;``, comments, template strings, calls
of anything but the methods above (``userId()``, ``eval(...)``), and every
property but ``length`` (``constructor``, ``__proto__``, ``prototype``...).

Values and semantics
====================

Values are strings, numbers (IEEE doubles), booleans and ``null``.

- ``a || b`` and ``a && b`` short-circuit and yield an operand, as in
  JavaScript: ``userId != null && userId.startsWith('u')`` never touches a
  null ``userId``.  Falsy values: ``false``, ``null``, ``0``, ``""``.
- ``!a`` is the negated truthiness of ``a``; ``-a`` negates a number.
- ``==`` and ``===`` are the same test (likewise ``!=`` and ``!==``): equal
  type and equal value; ``null == null`` is true.  **Unlike JavaScript**,
  values of different types are never equal (``'1' == 1`` is false).
- ``< <= > >=`` compare two numbers numerically or two strings by UTF-16
  code units (JavaScript order).  **Unlike JavaScript**, any other pair
  (string with number, anything with ``null`` or a boolean) is false, the
  way comparisons with NaN are: ``osVersion >= 10`` never matches, write
  ``osVersion >= '10'`` (a string comparison) instead.
- ``.length`` and ``.indexOf`` count UTF-16 code units, as JavaScript does;
  ``indexOf`` returns -1 when absent.  ``includes``, ``startsWith`` and
  ``endsWith`` return booleans; ``toLowerCase``/``toUpperCase`` use the
  locale-independent Unicode mappings.

Evaluation errors make the whole condition false for that connection (MPush:
"any exception counts as false"): a member access on anything but a string
(``null.length``, as in JavaScript, and also on numbers and booleans), a
method argument that is not a string, ``-`` on a non-number, and a variable
value that is neither a string nor ``None``.  The final result must be the
boolean ``true``; any other value (``userId``, ``tags && 1``...) is false,
because MPush casts the result to ``Boolean``.

Limits
======

Text longer than ``max_length`` characters, or parentheses and method
arguments nested deeper than ``max_depth``, is a compile error.  The subset
has no loops or calls of user code, so evaluation visits each node once and
costs time linear in the expression size (times the length of the strings
involved).

Compile errors raise `ConditionError`, whose message starts with the
1-based column (character offset in the text) of the offending token.  MPush
itself would reject nothing up front: a bad script fails for every
connection, so the broadcast reaches nobody.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from typing import NamedTuple, Union

__all__ = ["VARIABLES", "ConditionError", "Condition", "compile_condition"]

#: The variables MPush binds from each connection's session context.
VARIABLES = frozenset({"userId", "tags", "clientVersion", "osName", "osVersion"})

_Value = Union[str, float, bool, None]
_Env = Mapping[str, object]
_Eval = Callable[[_Env], _Value]


class ConditionError(ValueError):
    """
    A condition that is not in the supported subset: C{reason} says what,
    C{column} (1-based) says where.
    """

    def __init__(self, reason: str, column: int):
        super().__init__(f"column {column}: {reason}")
        self.reason = reason
        self.column = column


class _EvaluationError(Exception):
    """A JavaScript TypeError (or a deviation we treat as one) at run time."""


class Condition:
    """A compiled broadcast condition; evaluate it with L{matches}."""

    __slots__ = ("source", "_evaluate")

    def __init__(self, source: str, evaluate: _Eval):
        self.source = source
        self._evaluate = evaluate

    def matches(self, variables: Mapping[str, str | None]) -> bool:
        """
        Whether a connection with these variables passes the filter.  Never
        raises: as in MPush, any failure means the connection does not match.
        """
        try:
            result = self._evaluate(variables)
        except Exception:  # MPush: "any exception counts as false"
            return False
        return result is True

    def __repr__(self) -> str:
        return f"Condition({self.source!r})"


def compile_condition(text: str, *, max_length: int = 1024, max_depth: int = 32) -> Condition:
    """
    Parse C{text} into a L{Condition}, or raise L{ConditionError}.
    """
    if not isinstance(text, str):
        raise TypeError(f"condition must be a str, not {type(text).__name__}")
    if max_length < 1 or max_depth < 1:
        raise ValueError("max_length and max_depth must be positive")
    if len(text) > max_length:
        raise ConditionError(
            f"condition is {len(text)} characters long, the limit is {max_length}",
            max_length + 1,
        )
    parser = _Parser(_tokenize(text), max_depth)
    try:
        evaluate = parser.parse()
    except RecursionError:
        # Only reachable when max_depth is set beyond what the stack allows.
        raise ConditionError("expression nested too deeply", parser.column()) from None
    return Condition(text, evaluate)


# ---------------------------------------------------------------------------
# Tokenizer


class _Token(NamedTuple):
    kind: str  # "string", "number", "name", "op" or "end"
    value: object
    column: int


_OPERATORS = ("===", "!==", "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "-", "(", ")", ".", ",")
_MISUSED = {
    "=": "assignment '=' is not supported; compare with '==' or '==='",
    "&": "'&' is not supported; use '&&'",
    "|": "'|' is not supported; use '||'",
}
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_SPACES = frozenset(" \t\n\r\v\f\ufeff\u2028\u2029")
_LINE_BREAKS = frozenset("\n\r\u2028\u2029")
_IDENT_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_$")
_DIGITS = frozenset("0123456789")
_IDENT_PART = _IDENT_START | _DIGITS


def _is_space(char: str) -> bool:
    return char in _SPACES or (char > "\x7f" and unicodedata.category(char) == "Zs")


def _tokenize(text: str) -> list[_Token]:
    """Split C{text} into tokens; the list always ends with an "end" token."""
    tokens = []
    index, size = 0, len(text)
    while index < size:
        char = text[index]
        column = index + 1
        if _is_space(char):
            index += 1
        elif char in "'\"":
            value, index = _read_string(text, index)
            tokens.append(_Token("string", value, column))
        elif char in _DIGITS:
            value, index = _read_number(text, index)
            tokens.append(_Token("number", value, column))
        elif char in _IDENT_START:
            end = index + 1
            while end < size and text[end] in _IDENT_PART:
                end += 1
            tokens.append(_Token("name", text[index:end], column))
            index = end
        else:
            for operator in _OPERATORS:
                if text.startswith(operator, index):
                    tokens.append(_Token("op", operator, column))
                    index += len(operator)
                    break
            else:
                reason = _MISUSED.get(char, f"unexpected character {char!r}")
                raise ConditionError(reason, column)
    tokens.append(_Token("end", None, size + 1))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    quote = text[start]
    chars = []
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == quote:
            return "".join(chars), index + 1
        if char in _LINE_BREAKS:
            break
        if char == "\\":
            escaped = text[index + 1 : index + 2]
            if escaped not in _ESCAPES:
                if not escaped or escaped in _LINE_BREAKS:
                    break
                raise ConditionError(f"unsupported escape '\\{escaped}' in string", index + 1)
            chars.append(_ESCAPES[escaped])
            index += 2
        else:
            chars.append(char)
            index += 1
    raise ConditionError("unterminated string literal", start + 1)


def _read_number(text: str, start: int) -> tuple[float, int]:
    size = len(text)
    index = start
    while index < size and text[index] in _DIGITS:
        index += 1
    if text[start] == "0" and index - start > 1:
        raise ConditionError("numbers may not have leading zeros", start + 1)
    if index < size and text[index] == ".":
        index += 1
        fraction = index
        while index < size and text[index] in _DIGITS:
            index += 1
        if index == fraction:
            raise ConditionError("a number needs digits after '.'", fraction + 1)
    if index < size and text[index] in _IDENT_START:
        raise ConditionError("a name cannot start right after a number", index + 1)
    return float(text[start:index]), index


# ---------------------------------------------------------------------------
# Run-time semantics


def _truthy(value: _Value) -> bool:
    if value is None or value is False:
        return False
    if value is True:
        return True
    if type(value) is float:
        return value == value and value != 0.0
    return value != ""


def _utf16(text: str) -> bytes:
    return text.encode("utf-16-be", "surrogatepass")


def _utf16_length(text: str) -> int:
    return len(text) if text.isascii() else len(_utf16(text)) // 2


def _equal(left: _Value, right: _Value) -> bool:
    return type(left) is type(right) and left == right


def _not_equal(left: _Value, right: _Value) -> bool:
    return not _equal(left, right)


def _ordered(compare: Callable[[object, object], bool]) -> Callable[[_Value, _Value], bool]:
    """A relational operator: numbers or strings of the same type, else false."""

    def operator(left: _Value, right: _Value) -> bool:
        kind = type(left)
        if kind is not type(right):
            return False
        if kind is float:
            return compare(left, right)
        if kind is str:
            if left.isascii() and right.isascii():
                return compare(left, right)
            return compare(_utf16(left), _utf16(right))
        return False

    return operator


_BINARY = {
    "==": _equal,
    "===": _equal,
    "!=": _not_equal,
    "!==": _not_equal,
    "<": _ordered(lambda a, b: a < b),
    "<=": _ordered(lambda a, b: a <= b),
    ">": _ordered(lambda a, b: a > b),
    ">=": _ordered(lambda a, b: a >= b),
}
_EQUALITY = frozenset({"==", "===", "!=", "!=="})
_RELATIONAL = frozenset({"<", "<=", ">", ">="})
_OR = frozenset({"||"})
_AND = frozenset({"&&"})


def _not(value: _Value) -> bool:
    return not _truthy(value)


def _negate(value: _Value) -> float:
    if type(value) is not float:
        raise _EvaluationError("unary '-' needs a number")
    return -value


_PREFIX = {"!": _not, "-": _negate}
_PREFIX_OPERATORS = frozenset(_PREFIX)


def _receiver(value: _Value, member: str) -> str:
    if type(value) is not str:
        kind = "null" if value is None else type(value).__name__
        raise _EvaluationError(f"cannot read {member!r} of {kind}")
    return value


def _argument(value: _Value, member: str) -> str:
    if type(value) is not str:
        raise _EvaluationError(f"{member}() needs a string argument")
    return value


def _index_of(text: str, search: str) -> float:
    found = text.find(search)
    return float(found if found <= 0 else _utf16_length(text[:found]))


#: name -> (number of arguments, implementation)
_METHODS: dict[str, tuple[int, Callable[..., _Value]]] = {
    "indexOf": (1, _index_of),
    "includes": (1, lambda text, search: search in text),
    "startsWith": (1, lambda text, search: text.startswith(search)),
    "endsWith": (1, lambda text, search: text.endswith(search)),
    "toLowerCase": (0, lambda text: text.lower()),
    "toUpperCase": (0, lambda text: text.upper()),
}
_METHOD_LIST = ", ".join(sorted(_METHODS))
_KEYWORDS: dict[str, _Value] = {"true": True, "false": False, "null": None}


# Closure builders: each returns an evaluator taking the variable mapping.


def _constant(value: _Value) -> _Eval:
    return lambda env: value


def _variable(name: str) -> _Eval:
    def evaluate(env: _Env) -> _Value:
        value = env.get(name)
        if value is None or type(value) is str:
            return value
        if isinstance(value, str):
            return str(value)
        raise _EvaluationError(f"variable {name!r} is a {type(value).__name__}, not a string")

    return evaluate


def _any(operands: tuple[_Eval, ...]) -> _Eval:
    head, last = operands[:-1], operands[-1]

    def evaluate(env: _Env) -> _Value:
        for operand in head:
            value = operand(env)
            if _truthy(value):
                return value
        return last(env)

    return evaluate


def _all(operands: tuple[_Eval, ...]) -> _Eval:
    head, last = operands[:-1], operands[-1]

    def evaluate(env: _Env) -> _Value:
        for operand in head:
            value = operand(env)
            if not _truthy(value):
                return value
        return last(env)

    return evaluate


def _chain(first: _Eval, steps: tuple[tuple[Callable[[_Value, _Value], bool], _Eval], ...]) -> _Eval:
    def evaluate(env: _Env) -> _Value:
        value = first(env)
        for operator, operand in steps:
            value = operator(value, operand(env))
        return value

    return evaluate


def _prefixed(operand: _Eval, operators: tuple[Callable[[_Value], _Value], ...]) -> _Eval:
    def evaluate(env: _Env) -> _Value:
        value = operand(env)
        for operator in operators:
            value = operator(value)
        return value

    return evaluate


_Step = Callable[[_Value, _Env], _Value]


def _length_step(value: _Value, env: _Env) -> float:
    return float(_utf16_length(_receiver(value, "length")))


def _method_step(name: str, argument: _Eval | None) -> _Step:
    implementation = _METHODS[name][1]
    if argument is None:
        return lambda value, env: implementation(_receiver(value, name))

    def step(value: _Value, env: _Env) -> _Value:
        text = _receiver(value, name)
        return implementation(text, _argument(argument(env), name))

    return step


def _members(base: _Eval, steps: tuple[_Step, ...]) -> _Eval:
    def evaluate(env: _Env) -> _Value:
        value = base(env)
        for step in steps:
            value = step(value, env)
        return value

    return evaluate


# ---------------------------------------------------------------------------
# Parser


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of condition"
    if token.kind == "string":
        return "a string"
    if token.kind == "number":
        return "a number"
    return repr(token.value)


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    __slots__ = ("_tokens", "_index", "_depth", "_max_depth")

    def __init__(self, tokens: list[_Token], max_depth: int):
        self._tokens = tokens
        self._index = 0
        self._depth = 0
        self._max_depth = max_depth

    def column(self) -> int:
        return self._tokens[min(self._index, len(self._tokens) - 1)].column

    def parse(self) -> _Eval:
        if self._peek().kind == "end":
            raise ConditionError("empty condition", self._peek().column)
        evaluate = self._or()
        token = self._peek()
        if token.kind != "end":
            raise ConditionError(f"found {_describe(token)} after a complete expression", token.column)
        return evaluate

    # -- token helpers

    def _peek(self) -> _Token:
        return self._tokens[self._index]

    def _next(self) -> _Token:
        token = self._tokens[self._index]
        if token.kind != "end":
            self._index += 1
        return token

    def _at(self, operator: str) -> bool:
        token = self._tokens[self._index]
        return token.kind == "op" and token.value == operator

    def _operator_in(self, operators: frozenset[str]) -> str | None:
        token = self._tokens[self._index]
        if token.kind == "op" and token.value in operators:
            self._index += 1
            return token.value
        return None

    def _nested(self, opening: _Token, name: str | None = None) -> _Eval:
        """
        The or_expr inside a group, or the single argument of method C{name},
        one nesting level down; consumes the closing ')'.
        """
        self._depth += 1
        if self._depth > self._max_depth:
            raise ConditionError(f"nested deeper than {self._max_depth} levels", opening.column)
        evaluate = self._or()
        self._depth -= 1
        token = self._peek()
        if name is not None and self._at(","):
            raise ConditionError(f"{name}() takes exactly one argument", token.column)
        self._close(opening)
        return evaluate

    def _close(self, opening: _Token) -> None:
        token = self._next()
        if token.kind != "op" or token.value != ")":
            raise ConditionError(
                f"expected ')' to close '(' at column {opening.column}, found {_describe(token)}",
                token.column,
            )

    # -- grammar rules

    def _or(self) -> _Eval:
        operands = [self._and()]
        while self._operator_in(_OR):
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else _any(tuple(operands))

    def _and(self) -> _Eval:
        operands = [self._equality()]
        while self._operator_in(_AND):
            operands.append(self._equality())
        return operands[0] if len(operands) == 1 else _all(tuple(operands))

    def _equality(self) -> _Eval:
        return self._binary(_EQUALITY, self._relational)

    def _relational(self) -> _Eval:
        return self._binary(_RELATIONAL, self._unary)

    def _binary(self, operators: frozenset[str], operand: Callable[[], _Eval]) -> _Eval:
        first = operand()
        steps = []
        while (operator := self._operator_in(operators)) is not None:
            steps.append((_BINARY[operator], operand()))
        return first if not steps else _chain(first, tuple(steps))

    def _unary(self) -> _Eval:
        operators = []
        while (operator := self._operator_in(_PREFIX_OPERATORS)) is not None:
            operators.append(_PREFIX[operator])
        operand = self._postfix()
        if not operators:
            return operand
        return _prefixed(operand, tuple(reversed(operators)))

    def _postfix(self) -> _Eval:
        start = self._peek()
        base = self._primary()
        steps = []
        while self._at("."):
            self._next()
            steps.append(self._member())
        if self._at("("):
            if start.kind == "name" and not steps:
                reason = f"{start.value!r} is a variable, not a function"
                column = start.column
            else:
                reason = f"only the string methods ({_METHOD_LIST}) can be called"
                column = self._peek().column
            raise ConditionError(reason, column)
        return base if not steps else _members(base, tuple(steps))

    def _member(self) -> _Step:
        token = self._next()
        if token.kind != "name":
            raise ConditionError(f"expected a property or method name after '.', found {_describe(token)}", token.column)
        name = token.value
        if name == "length":
            if self._at("("):
                raise ConditionError("'length' is a property, not a method", token.column)
            return _length_step
        if name not in _METHODS:
            if self._at("("):
                raise ConditionError(f"unknown method {name!r} (supported: {_METHOD_LIST})", token.column)
            raise ConditionError(f"unknown property {name!r} (only 'length' is supported)", token.column)
        opening = self._peek()
        if not self._at("("):
            raise ConditionError(f"method {name!r} must be called: {name}(...)", token.column)
        self._next()
        if _METHODS[name][0] == 0:
            if not self._at(")") and self._peek().kind != "end":
                raise ConditionError(f"{name}() takes no arguments", self._peek().column)
            self._close(opening)
            return _method_step(name, None)
        if self._at(")"):
            raise ConditionError(f"{name}() takes exactly one argument", self._peek().column)
        return _method_step(name, self._nested(opening, name))

    def _primary(self) -> _Eval:
        token = self._next()
        if token.kind in ("string", "number"):
            return _constant(token.value)
        if token.kind == "name":
            name = token.value
            if name in _KEYWORDS:
                return _constant(_KEYWORDS[name])
            if name in VARIABLES:
                return _variable(name)
            if self._at("("):
                raise ConditionError(
                    f"unknown function {name!r}: only the string methods ({_METHOD_LIST}) can be called",
                    token.column,
                )
            variables = ", ".join(sorted(VARIABLES))
            raise ConditionError(f"unknown identifier {name!r} (variables: {variables})", token.column)
        if token.kind == "op" and token.value == "(":
            return self._nested(token)
        raise ConditionError(f"expected a value, found {_describe(token)}", token.column)
