"""Reading a query before it runs: the tables it names, and the things it may never do.

A small SQL tokenizer and reference scanner (no SQL parser library is installed, and the engine's own
parser does not expose the tables it resolved). It finds every table a SELECT names, through joins,
comma joins, parenthesised joins, subqueries (in FROM, WHERE, SELECT lists), CTEs, UNION/INTERSECT/EXCEPT,
quoted identifiers and schema-qualified names, and it refuses:

* anything but one read-only query (DDL, DML, COPY, CREATE EXTERNAL TABLE, SET, SHOW, EXPLAIN...);
* reading files or other sources (``read_parquet(...)``, ``read_csv(...)``, a string literal where a
  table is expected, any table function);
* the engine's catalogue (``information_schema``, ``pg_catalog``);
* syntax whose meaning could differ between this scanner and the engine (nested block comments,
  backslashes in string literals, dollar quoting), so that the two never disagree about what is code.

CTE scoping follows the SQL standard: a CTE name is visible in the query that declares it, including
the bodies of later CTEs, but not in its own body unless the WITH is RECURSIVE (so
``WITH pupils AS (SELECT * FROM pupils)`` names the real ``pupils`` table).

This scan gives the clear refusal. It is not the only barrier: the engine only ever sees the filtered,
projected views the grant allows, so a reference this scanner missed could not reach another table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from access.policy import AccessRefused

#: Unquoted words that may appear nowhere in a query (they start or belong to statements that are not a
#: read-only SELECT). Quote an identifier to use one of them as a column name.
FORBIDDEN_WORDS: frozenset[str] = frozenset(
    {
        "insert",
        "update",
        "delete",
        "merge",
        "upsert",
        "drop",
        "create",
        "alter",
        "truncate",
        "copy",
        "attach",
        "detach",
        "grant",
        "revoke",
        "pragma",
        "install",
        "load",
        "into",
        "call",
        "execute",
        "explain",
        "describe",
        "show",
        "set",
        "reset",
        "table",
        "vacuum",
        "analyze",
        "export",
        "import",
        "use",
        "prepare",
        "deallocate",
        "lock",
        "unload",
        "external",
        "refresh",
        "optimize",
        "checkpoint",
        "begin",
        "commit",
        "rollback",
        "savepoint",
        "listen",
        "notify",
        "declare",
    }
)
#: Catalogue schemas: never readable.
CATALOGUE_NAMES: frozenset[str] = frozenset(
    {"information_schema", "pg_catalog", "sys", "system", "mysql", "sqlite_master", "sqlite_schema"}
)
#: Functions that read files or other sources wherever they appear.
FILE_FUNCTIONS: frozenset[str] = frozenset(
    {
        "read",
        "glob",
        "parquet_scan",
        "csv_scan",
        "delta_scan",
        "iceberg_scan",
        "sqlite_scan",
        "load_extension",
        "query",
        "query_table",
        "file",
        "url",
        "read_text",
        "read_blob",
        "lo_import",
        "pg_read_file",
        "pg_read_binary_file",
    }
)
FILE_FUNCTION_PREFIXES: tuple[str, ...] = ("read_", "scan_")
#: Functions whose argument list may contain FROM without it naming a table.
FROM_IN_ARGS_FUNCTIONS: frozenset[str] = frozenset(
    {"extract", "substring", "substr", "trim", "overlay", "position", "date_part"}
)
#: Words after which "(" does not open a function's argument list.
_NON_FUNCTION_WORDS: frozenset[str] = frozenset(
    {
        "in",
        "exists",
        "any",
        "all",
        "some",
        "as",
        "on",
        "from",
        "join",
        "where",
        "and",
        "or",
        "not",
        "select",
        "then",
        "else",
        "when",
        "case",
        "by",
        "over",
        "values",
        "lateral",
        "using",
        "with",
        "union",
        "intersect",
        "except",
        "having",
        "filter",
        "within",
        "recursive",
        "is",
        "like",
        "ilike",
        "between",
        "group",
        "order",
        "partition",
        "window",
        "distinct",
        "limit",
        "offset",
        "qualify",
        "materialized",
        "return",
        "returning",
    }
)
#: Words that end a FROM clause.
_END_OF_FROM: frozenset[str] = frozenset(
    {
        "where",
        "group",
        "having",
        "order",
        "limit",
        "offset",
        "union",
        "intersect",
        "except",
        "window",
        "qualify",
        "fetch",
        "select",
    }
)
_QUERY_STARTS = frozenset({"select", "with", "values"})


@dataclass(frozen=True)
class Token:
    kind: str  # ident (unquoted, lower-cased), qident (quoted), string, number, op
    value: str
    pos: int


@dataclass(frozen=True)
class TableRef:
    """A table a query names: its (lower-cased) name, any qualifier, and how it was written."""

    name: str
    qualifier: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class ScannedQuery:
    sql: str
    tables: tuple[TableRef, ...]
    ctes: tuple[str, ...] = field(default=())

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.name for t in self.tables))


def _refuse(rule: str, message: str) -> AccessRefused:
    return AccessRefused(rule, message)


def tokenize(sql: str) -> list[Token]:
    """Tokens of ``sql`` without comments; refuses syntax that the scanner and the engine could read apart."""
    tokens: list[Token] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise _refuse("sql-unreadable", "a /* comment is not closed")
            if "/*" in sql[i + 2 : end]:
                raise _refuse("sql-unsupported", "nested /* comments */ are not accepted")
            i = end + 2
        elif ch == "'":
            j, parts = i + 1, []
            while True:
                k = sql.find("'", j)
                if k < 0:
                    raise _refuse("sql-unreadable", "a 'string' is not closed")
                parts.append(sql[j:k])
                if k + 1 < n and sql[k + 1] == "'":
                    parts.append("'")
                    j = k + 2
                    continue
                break
            value = "".join(parts)
            if "\\" in value:
                raise _refuse("sql-unsupported", "backslashes in string literals are not accepted")
            if (
                tokens
                and tokens[-1].kind == "ident"
                and tokens[-1].pos + len(tokens[-1].value) == i
                and tokens[-1].value in {"e", "x", "b", "n", "u", "r"}
            ):
                raise _refuse("sql-unsupported", "prefixed string literals (E'...', X'...') are not accepted")
            tokens.append(Token("string", value, i))
            i = k + 1
        elif ch in '"`':
            j, parts = i + 1, []
            while True:
                k = sql.find(ch, j)
                if k < 0:
                    raise _refuse("sql-unreadable", f"a {ch}quoted identifier{ch} is not closed")
                parts.append(sql[j:k])
                if k + 1 < n and sql[k + 1] == ch:
                    parts.append(ch)
                    j = k + 2
                    continue
                break
            tokens.append(Token("qident", "".join(parts), i))
            i = k + 1
        elif ch == "$":
            raise _refuse("sql-unsupported", "'$' (dollar quoting, parameters) is not accepted")
        elif ch.isdigit() or (ch == "." and i + 1 < n and sql[i + 1].isdigit()):
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "." or sql[j] == "_"):
                j += 1
            tokens.append(Token("number", sql[i:j], i))
            i = j
        elif ch.isalpha() or ch == "_":
            j = i + 1
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            tokens.append(Token("ident", sql[i:j].lower(), i))
            i = j
        else:
            for op in ("::", "<=", ">=", "<>", "!=", "||", "->>", "->", "=>"):
                if sql.startswith(op, i):
                    tokens.append(Token("op", op, i))
                    i += len(op)
                    break
            else:
                tokens.append(Token("op", ch, i))
                i += 1
    return tokens


class _Frame:
    """One level of parentheses (or the whole statement)."""

    __slots__ = (
        "kind",
        "function",
        "ctes",
        "expect_table",
        "in_from",
        "cte_state",
        "cte_name",
        "recursive",
        "defines_cte",
    )

    def __init__(self, kind: str, function: str | None = None) -> None:
        self.kind = kind  # top, query, func, expr, from_paren, cte_columns
        self.function = function
        self.ctes: set[str] = set()
        self.expect_table = False
        self.in_from = False
        self.cte_state: str | None = None  # name, after_name, after_as, after_body
        self.cte_name: str | None = None
        self.recursive = False
        self.defines_cte: tuple[str, _Frame] | None = None


def _is_name(token: Token) -> bool:
    return token.kind in ("ident", "qident")


def scan_sql(sql: str) -> ScannedQuery:
    """The tables ``sql`` reads (CTE references resolved away). Raises AccessRefused (rule names the check)
    for anything but one read-only query, file reads, table functions and catalogue access."""
    tokens = tokenize(sql)
    semicolons = [k for k, t in enumerate(tokens) if t.kind == "op" and t.value == ";"]
    if semicolons:
        if any(k != len(tokens) - 1 for k in semicolons):
            raise _refuse("single-statement", "send one query at a time (no ';' between statements)")
        tokens = tokens[:-1]
    if not tokens:
        raise _refuse("sql-unreadable", "the query is empty")
    first = tokens[0]
    if not (
        (first.kind == "ident" and first.value in _QUERY_STARTS)
        or (first.kind == "op" and first.value == "(")
    ):
        word = first.value.upper() if first.kind == "ident" else first.value
        raise _refuse("read-only", f"only SELECT queries are accepted (this one starts with {word})")
    for k, t in enumerate(tokens):
        if t.kind == "ident" and t.value in FORBIDDEN_WORDS:
            raise _refuse(
                "read-only",
                f"{t.value.upper()} is not allowed: only read-only SELECT queries are "
                "accepted (quote the word if it is a column name)",
            )
        if _is_name(t) and t.value.lower() in CATALOGUE_NAMES and t.value.lower() not in ("sys", "system"):
            raise _refuse(
                "catalogue",
                f"{t.value} is not readable: ask for the tables your role may read "
                "with `attendance query --role ROLE --list-tables`",
            )
        called = k + 1 < len(tokens) and tokens[k + 1].kind == "op" and tokens[k + 1].value == "("
        if (
            t.kind == "ident"
            and called
            and (t.value in FILE_FUNCTIONS or t.value.startswith(FILE_FUNCTION_PREFIXES))
        ):
            raise _refuse(
                "file-read",
                f"{t.value}(...) reads files or other sources: query the tables your role may read by name",
            )

    refs: list[TableRef] = []
    ctes: list[str] = []
    stack = [_Frame("top")]
    i, n = 0, len(tokens)
    while i < n:
        t = tokens[i]
        f = stack[-1]
        nxt = tokens[i + 1] if i + 1 < n else None
        if t.kind == "op" and t.value == "(":
            prev = tokens[i - 1] if i > 0 else None
            if f.cte_state == "after_name":
                frame = _Frame("cte_columns")
            elif f.cte_state == "after_as":
                frame = _Frame("query")
                assert f.cte_name is not None
                frame.defines_cte = (f.cte_name, f)
                f.cte_state = "after_body"
            elif f.expect_table:
                f.expect_table = False
                frame = _Frame("from_paren")
            elif prev is not None and (
                (prev.kind == "ident" and prev.value not in _NON_FUNCTION_WORDS) or prev.kind == "qident"
            ):
                frame = _Frame("func", function=prev.value.lower())
            else:
                frame = _Frame("expr")
            if nxt is not None and nxt.kind == "ident" and nxt.value in _QUERY_STARTS:
                frame.kind = "query"
            elif frame.kind == "from_paren":  # a parenthesised join: tables follow at once
                frame.expect_table = frame.in_from = True
            stack.append(frame)
            i += 1
            continue
        if t.kind == "op" and t.value == ")":
            if len(stack) == 1:
                raise _refuse("sql-unreadable", "a ')' has no matching '('")
            closed = stack.pop()
            if closed.defines_cte is not None:
                name, owner = closed.defines_cte
                owner.ctes.add(name)
            i += 1
            continue
        if f.cte_state == "name":
            if not _is_name(t):
                raise _refuse("sql-unreadable", "WITH must be followed by a name")
            name = t.value.lower()
            ctes.append(name)
            f.cte_name = name
            if f.recursive:
                f.ctes.add(name)
            f.cte_state = "after_name"
            i += 1
            continue
        if f.cte_state == "after_name" and t.kind == "ident" and t.value == "as":
            f.cte_state = "after_as"
            i += 1
            continue
        if f.cte_state == "after_as" and t.kind == "ident" and t.value in ("not", "materialized"):
            i += 1
            continue
        if f.cte_state == "after_body":
            f.cte_state = "name" if (t.kind == "op" and t.value == ",") else None
            if f.cte_state == "name":
                i += 1
                continue
        if f.expect_table:
            if t.kind == "ident" and t.value in ("lateral", "only"):
                i += 1
                continue
            if t.kind == "string":
                raise _refuse("file-read", f"'{t.value}' names a file or path: query tables by name")
            if _is_name(t):
                parts = [t]
                j = i + 1
                while (
                    j + 1 < n
                    and tokens[j].kind == "op"
                    and tokens[j].value == "."
                    and _is_name(tokens[j + 1])
                ):
                    parts.append(tokens[j + 1])
                    j += 2
                if j < n and tokens[j].kind == "op" and tokens[j].value == "(":
                    raise _refuse(
                        "table-function",
                        f"{'.'.join(p.value for p in parts)}(...) is a table function: "
                        "only the tables your role may read can follow FROM or JOIN",
                    )
                text = ".".join(p.value for p in parts)
                name = parts[-1].value.lower()
                qualifier = tuple(p.value.lower() for p in parts[:-1])
                if any(q in CATALOGUE_NAMES for q in qualifier):
                    raise _refuse("catalogue", f"{text} is not readable")
                visible_cte = not qualifier and any(name in frame.ctes for frame in stack)
                if not visible_cte:
                    refs.append(TableRef(name=name, qualifier=qualifier, text=text))
                f.expect_table = False
                i = j
                continue
            f.expect_table = False  # anything else: let the engine report the syntax error
        if t.kind == "ident":
            word = t.value
            if word == "with":
                f.cte_state = "name"
                if nxt is not None and nxt.kind == "ident" and nxt.value == "recursive":
                    f.recursive = True
                    i += 1
            elif word == "from":
                if not (f.kind == "func" and f.function in FROM_IN_ARGS_FUNCTIONS):
                    f.expect_table = True
                    f.in_from = True
            elif word == "join":
                f.expect_table = True
                f.in_from = True
            elif word in _END_OF_FROM:
                f.in_from = False
        elif t.kind == "op" and t.value == "," and f.in_from:
            f.expect_table = True
        i += 1
    if len(stack) != 1:
        raise _refuse("sql-unreadable", "a '(' is not closed")
    return ScannedQuery(sql=sql, tables=tuple(refs), ctes=tuple(dict.fromkeys(ctes)))
