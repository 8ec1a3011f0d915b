"""The query scanner: every table a SELECT names, and every statement or trick it must refuse."""

from __future__ import annotations

import pytest

from access.policy import AccessRefused
from access.sql_guard import scan_sql


@pytest.mark.parametrize(
    "sql, tables",
    [
        ("SELECT * FROM a", ["a"]),
        ("select * from A", ["a"]),
        ("SELECT * FROM a JOIN b ON a.x = b.x LEFT JOIN c USING (x)", ["a", "b", "c"]),
        ("SELECT * FROM a, b AS bb, c cc", ["a", "b", "c"]),
        ("SELECT * FROM a JOIN b ON a.x = b.x, c", ["a", "b", "c"]),
        ("SELECT * FROM ((a JOIN b ON a.x = b.x))", ["a", "b"]),
        ("SELECT * FROM (SELECT * FROM a) s JOIN (SELECT * FROM b) t ON s.x = t.x", ["a", "b"]),
        (
            "SELECT (SELECT max(x) FROM a) AS m FROM b "
            "WHERE EXISTS (SELECT 1 FROM c) AND y IN (SELECT y FROM d)",
            ["a", "b", "c", "d"],
        ),
        (
            "SELECT x FROM a UNION SELECT x FROM b EXCEPT SELECT x FROM c INTERSECT SELECT x FROM d",
            ["a", "b", "c", "d"],
        ),
        ('SELECT * FROM "Quoted Name"', ["quoted name"]),
        ("SELECT * FROM `tick`", ["tick"]),
        ("SELECT * FROM s.t", ["t"]),
        ("SELECT extract(year FROM d) AS y, substring(s FROM 2 FOR 3), trim(both 'x' FROM s) FROM a", ["a"]),
        ("SELECT count(*) FILTER (WHERE x > 1) OVER (PARTITION BY y ORDER BY z) FROM a", ["a"]),
        ("SELECT CAST(x AS INT) FROM a -- FROM hidden\n", ["a"]),
        ("SELECT 'FROM b' AS text FROM a /* FROM c */", ["a"]),
        ("VALUES (1, 2), (3, 4)", []),
        ("SELECT * FROM a;", ["a"]),
        ("SELECT * FROM a, LATERAL (SELECT * FROM b) l", ["a", "b"]),
    ],
)
def test_scanner_finds_every_table(sql: str, tables: list[str]) -> None:
    assert list(scan_sql(sql).table_names) == tables


@pytest.mark.parametrize(
    "sql, tables",
    [
        ("WITH x AS (SELECT * FROM a) SELECT * FROM x", ["a"]),
        ("WITH x AS (SELECT * FROM a), y AS (SELECT * FROM x JOIN b ON 1 = 1) SELECT * FROM y", ["a", "b"]),
        ("WITH x (c1, c2) AS (SELECT 1, 2) SELECT * FROM x", []),
        # a non-recursive CTE does not see itself: the inner name is the real table
        ("WITH pupils AS (SELECT * FROM pupils) SELECT * FROM pupils", ["pupils"]),
        ("WITH RECURSIVE r AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r", []),
        # a CTE declared inside a subquery is not visible outside it
        ("SELECT * FROM x UNION ALL SELECT * FROM (WITH x AS (SELECT 1 AS a) SELECT * FROM x)", ["x"]),
        ("WITH x AS MATERIALIZED (SELECT * FROM a) SELECT * FROM x", ["a"]),
        # a qualified name never resolves to a CTE
        ("WITH t AS (SELECT 1) SELECT * FROM s.t", ["t"]),
    ],
)
def test_cte_scoping(sql: str, tables: list[str]) -> None:
    assert list(scan_sql(sql).table_names) == tables


@pytest.mark.parametrize(
    "sql, rule",
    [
        ("", "sql-unreadable"),
        ("SELECT * FROM a; SELECT * FROM b", "single-statement"),
        ("INSERT INTO a VALUES (1)", "read-only"),
        ("UPDATE a SET x = 1", "read-only"),
        ("DELETE FROM a", "read-only"),
        ("DROP TABLE a", "read-only"),
        ("CREATE TABLE b AS SELECT * FROM a", "read-only"),
        ("CREATE EXTERNAL TABLE b STORED AS PARQUET LOCATION '/lake/restricted/pupils'", "read-only"),
        ("COPY a TO '/tmp/a.csv'", "read-only"),
        ("SHOW TABLES", "read-only"),
        ("EXPLAIN SELECT * FROM a", "read-only"),
        ("SET datafusion.catalog.information_schema = true", "read-only"),
        ("SELECT * INTO b FROM a", "read-only"),
        ("WITH x AS (DELETE FROM a RETURNING *) SELECT * FROM x", "read-only"),
        ("SELECT * FROM read_parquet('/lake/restricted/pupils/*.parquet')", "file-read"),
        ("SELECT * FROM READ_CSV('/etc/passwd')", "file-read"),
        ("SELECT * FROM a WHERE x IN (SELECT * FROM read_ipc('f'))", "file-read"),
        ("SELECT * FROM scan_delta('/lake/restricted/pupils')", "file-read"),
        ("SELECT * FROM '/lake/restricted/pupils/part-0.parquet'", "file-read"),
        ("SELECT * FROM a JOIN 'file.csv' ON 1 = 1", "file-read"),
        ("SELECT * FROM generate_series(1, 10)", "table-function"),
        ("SELECT * FROM unnest([1, 2])", "table-function"),
        ("SELECT * FROM information_schema.tables", "catalogue"),
        ('SELECT * FROM "information_schema"."columns"', "catalogue"),
        ("SELECT * FROM pg_catalog.pg_tables", "catalogue"),
        ("SELECT * FROM system.tables", "catalogue"),
        ("SELECT 'a\\' FROM b", "sql-unsupported"),
        ("SELECT E'x' FROM a", "sql-unsupported"),
        ("SELECT $$x$$ FROM a", "sql-unsupported"),
        ("SELECT 1 /* outer /* inner */ FROM a */", "sql-unsupported"),
        ("SELECT * FROM a /* unclosed", "sql-unreadable"),
        ("SELECT 'unclosed FROM a", "sql-unreadable"),
        ("SELECT * FROM (a", "sql-unreadable"),
        ("SELECT * FROM a)", "sql-unreadable"),
    ],
)
def test_scanner_refuses(sql: str, rule: str) -> None:
    with pytest.raises(AccessRefused) as info:
        scan_sql(sql)
    assert info.value.rule == rule


def test_a_forbidden_word_may_be_a_quoted_column_name() -> None:
    assert list(scan_sql('SELECT "table", "set" FROM a').table_names) == ["a"]


def test_qualifiers_are_kept_for_the_gateway_to_refuse() -> None:
    ref = scan_sql("SELECT * FROM restricted.pupils").tables[0]
    assert (ref.name, ref.qualifier, ref.text) == ("pupils", ("restricted",), "restricted.pupils")
