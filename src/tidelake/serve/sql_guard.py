"""What user SQL may do before it reaches the engine: read known tables, call safe functions.

Two parsers look at every query, and both must agree it is harmless:

1. **sqlglot** (duckdb dialect) checks the statement shape: exactly one statement,
   a query (``SELECT``, ``WITH ... SELECT``, set operations of selects), and no
   DDL/DML/``COPY``/``ATTACH``/``INSTALL``/``LOAD``/``SET``/``PRAGMA``/``CALL``/
   ``SELECT ... INTO`` anywhere in the tree. Its errors are the readable ones.
2. **DuckDB's own parser** (``json_serialize_sql`` on a scratch connection with no
   data and no file access) gives the tree the engine will actually run, so no
   parser disagreement can smuggle anything past step 1. Every table reference
   must be a known table (optionally ``lake.``/``db.``-qualified) or a CTE in
   scope; every function must be on an allowlist (pure scalar, aggregate and
   window functions; ``unnest``/``range``/``generate_series`` as table functions).
   Quoted file paths (DuckDB replacement scans), ``read_*``, ``glob``,
   ``duckdb_*()``, ``current_setting``, ``query_table`` ... are not on it.

The guard is the first wall, not the only one: the connection that runs the
query is itself sandboxed (see ``tidelake.serve.engine``).
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, SqlglotError

from tidelake.errors import QueryError

MAX_SQL_LENGTH = 100_000
MAX_NESTING = 32
"""Deepest nesting of parentheses and brackets a query may have (parsers recurse on it)."""

_AGGREGATES = """
any_value approx_count_distinct approx_quantile approx_top_k arbitrary arg_max arg_max_null
arg_max_nulls_last arg_min arg_min_null arg_min_nulls_last argmax argmin array_agg avg bit_and
bit_or bit_xor bool_and bool_or corr count count_if count_star countif covar_pop covar_samp
entropy favg first fsum geomean geometric_mean group_concat histogram json_group_array
json_group_object kahan_sum kurtosis kurtosis_pop last list listagg mad max max_by mean median
min min_by mode product quantile quantile_cont quantile_disc regr_avgx regr_avgy regr_count
regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy reservoir_quantile sem skewness
stddev stddev_pop stddev_samp string_agg sum sumkahan var_pop var_samp variance wavg
weighted_avg
"""
_WINDOW = """
cume_dist dense_rank fill first_value lag last_value lead nth_value ntile percent_rank rank
rank_dense row_number
"""
_MATH = """
abs acos acosh add asin asinh atan atan2 atanh bit_count cbrt ceil ceiling cos cosh cot degrees
divide even exp factorial fdiv floor fmod gamma gcd greatest greatest_common_divisor isfinite
isinf isnan lcm least least_common_multiple lgamma ln log log10 log2 mod multiply nextafter pi
pow power radians random round round_even roundbankers sign signbit sin sinh sqrt subtract tan
tanh trunc xor equi_width_bins bar
"""
_TEXT = """
ascii base64 bin bit_length char_length character_length chr concat concat_ws contains
damerau_levenshtein decode editdist3 encode ends_with format format_bytes formatreadabledecimalsize
formatreadablesize from_base64 from_binary from_hex hamming hash hex ilike_escape instr jaccard
jaro_similarity jaro_winkler_similarity lcase left left_grapheme len length length_grapheme
levenshtein like_escape lower lpad ltrim md5 md5_number md5_number_lower md5_number_upper
mismatches nfc_normalize not_ilike_escape not_like_escape octet_length ord position prefix
printf regexp_escape regexp_extract regexp_extract_all regexp_full_match regexp_matches
regexp_replace regexp_split_to_array repeat replace reverse right right_grapheme rpad rtrim
sha1 sha256 split split_part starts_with str_split str_split_regex string_split
string_split_regex string_to_array strip_accents strlen strpos substr substring
substring_grapheme suffix to_base to_base64 to_binary to_hex translate trim ucase unbin unhex
unicode upper url_decode url_encode gen_random_uuid uuid uuidv4 uuidv7 uuid_extract_timestamp
uuid_extract_version
"""
_TIME = """
age ago century current_date current_localtime current_localtimestamp date_add date_diff
date_part date_sub date_trunc datediff datepart datesub datetrunc day dayname dayofmonth
dayofweek dayofyear decade epoch epoch_ms epoch_ns epoch_us era get_current_time
get_current_timestamp hour isodow isoyear julian last_day make_date make_time make_timestamp
make_timestamp_ms make_timestamp_ns make_timestamptz microsecond millennium millisecond minute
month monthname nanosecond normalized_interval now quarter second strftime strptime time_bucket
timezone timezone_hour timezone_minute to_centuries to_days to_decades to_hours
to_microseconds to_millennia to_milliseconds to_minutes to_months to_quarters to_seconds
to_timestamp to_weeks to_years today transaction_timestamp try_strptime week weekday
weekofyear year yearweek
"""
_NESTED = """
aggregate apply array_aggr array_aggregate array_append array_apply array_cat array_concat
array_contains array_cosine_distance array_cosine_similarity array_cross_product
array_distance array_distinct array_dot_product array_extract array_filter array_grade_up
array_has array_has_all array_has_any array_indexof array_inner_product array_intersect
array_length array_negative_dot_product array_negative_inner_product array_pop_back
array_pop_front array_position array_prepend array_push_back array_push_front array_reduce
array_resize array_reverse array_reverse_sort array_select array_slice array_sort
array_to_string array_transform array_unique array_value array_where array_zip cardinality
element_at filter flatten generate_series generate_subscripts grade_up list_aggr
list_aggregate list_any_value list_append list_apply list_approx_count_distinct list_avg
list_bit_and list_bit_or list_bit_xor list_bool_and list_bool_or list_cat list_concat
list_contains list_cosine_distance list_cosine_similarity list_count list_distance
list_distinct list_dot_product list_element list_entropy list_extract list_filter list_first
list_grade_up list_has list_has_all list_has_any list_histogram list_indexof
list_inner_product list_intersect list_kurtosis list_kurtosis_pop list_last list_mad list_max
list_median list_min list_mode list_negative_dot_product list_negative_inner_product list_pack
list_position list_prepend list_product list_reduce list_resize list_reverse
list_reverse_sort list_select list_sem list_skewness list_slice list_sort list_stddev_pop
list_stddev_samp list_string_agg list_sum list_transform list_unique list_value list_var_pop
list_var_samp list_where list_zip map map_concat map_contains map_contains_entry
map_contains_value map_entries map_extract map_extract_value map_from_entries map_keys
map_values range reduce row struct_concat struct_contains struct_extract struct_extract_at
struct_has struct_indexof struct_insert struct_keys struct_pack struct_position struct_update
struct_values union_extract union_tag union_value unnest unpivot_list
"""
_JSON = """
array_to_json from_json from_json_strict json json_array json_array_length json_contains
json_exists json_extract json_extract_path json_extract_path_text json_extract_string
json_group_structure json_keys json_merge_patch json_object json_pretty json_quote
json_structure json_transform json_transform_strict json_type json_valid json_value
row_to_json to_json
"""
_OTHER = """
coalesce constant_or_null enum_code enum_first enum_last enum_range enum_range_boundary if
ifnull nullif typeof
"""

ALLOWED_FUNCTIONS: frozenset[str] = frozenset(
    " ".join((_AGGREGATES, _WINDOW, _MATH, _TEXT, _TIME, _NESTED, _JSON, _OTHER)).split()
)
"""Functions user SQL may call: pure computations that touch no file, setting or network."""

ALLOWED_TABLE_FUNCTIONS: frozenset[str] = frozenset({"unnest", "range", "generate_series"})
"""Table functions that only generate rows (the time and memory limits bound them)."""

_PG_CATALOG = """
pg_am pg_attrdef pg_attribute pg_class pg_collation pg_constraint pg_database pg_depend
pg_description pg_enum pg_index pg_indexes pg_namespace pg_proc pg_sequence pg_sequences
pg_tables pg_tablespace pg_type pg_views
"""
_INFORMATION_SCHEMA = """
character_sets check_constraints columns constraint_column_usage constraint_table_usage
key_column_usage referential_constraints schemata tables table_constraints views
"""
_CATALOG_FUNCTIONS = """
version current_database current_schema current_schemas pg_table_is_visible
pg_type_is_visible pg_function_is_visible format_type format_pg_type obj_description
col_description shobj_description pg_get_expr pg_get_constraintdef pg_get_viewdef
has_table_privilege has_schema_privilege has_database_privilege has_column_privilege
has_any_column_privilege has_function_privilege pg_has_role pg_typeof pg_my_temp_schema
pg_is_other_temp_schema array_upper array_length pg_get_userbyid
"""

SYSTEM_RELATIONS: dict[str, frozenset[str]] = {
    "pg_catalog": frozenset(_PG_CATALOG.split()),
    "information_schema": frozenset(_INFORMATION_SCHEMA.split()),
}
"""DuckDB's PostgreSQL-compatible catalog views a ``Catalog(system=True)`` query may read
(never ``pg_settings``: DuckDB's settings name local paths). They run over a schema-only copy
of the pipeline's tables (``tidelake.serve.engine``), so they show names and types, no rows."""

CATALOG_FUNCTIONS: frozenset[str] = frozenset(_CATALOG_FUNCTIONS.split())
"""Catalog functions a ``Catalog(system=True)`` query may call (qualified with
``pg_catalog.`` or not): they read the schema-only catalog, no data, file or setting."""

_OPERATOR = re.compile(r"^[-+*/%^<>=!~&|@#?:]+$")
_TABLE_REFS = {
    "BASE_TABLE", "SUBQUERY", "JOIN", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "EMPTY_FROM",
    "PIVOT", "CTE", "SHOW_REF", "COLUMN_DATA", "DELIM_GET", "BOUND_TABLE_REF", "INVALID",
}  # fmt: skip
_ALLOWED_TABLE_REFS = {
    "BASE_TABLE", "SUBQUERY", "JOIN", "TABLE_FUNCTION", "EXPRESSION_LIST", "EMPTY", "EMPTY_FROM",
    "PIVOT",
}  # fmt: skip
_FORBIDDEN_NODES: tuple[type, ...] = (
    exp.DDL, exp.DML, exp.Command, exp.Into, exp.Copy, exp.Set, exp.Pragma, exp.Use,
    exp.Describe, exp.Transaction, exp.Commit, exp.Rollback,
)  # fmt: skip


class SQLRefused(QueryError):
    """The query was refused before running: it is not a single read-only query of known tables."""


@dataclass(frozen=True)
class Catalog:
    """The table names a query may read: bare, ``lake.<t>`` or ``db.<t>``."""

    lake: frozenset[str]
    db: frozenset[str]
    system: bool = False
    """Also DuckDB's ``pg_catalog`` and ``information_schema`` views (``SYSTEM_RELATIONS``)
    and ``CATALOG_FUNCTIONS``: the catalog queries of PostgreSQL clients."""

    def knows(self, schema: str, name: str) -> bool:
        if self.system:
            name = name.lower()
            if schema in SYSTEM_RELATIONS:
                return name in SYSTEM_RELATIONS[schema]
            if not schema and name in SYSTEM_RELATIONS["pg_catalog"]:
                return True
        if schema in ("", "main"):
            return name in self.lake or name in self.db
        if schema == "lake":
            return name in self.lake
        if schema == "db":
            return name in self.db
        return False


_scratch: duckdb.DuckDBPyConnection | None = None
_scratch_lock = threading.Lock()


def _duckdb_tree(sql: str) -> dict[str, Any]:
    """DuckDB's parse tree of ``sql`` (parsing only: nothing is bound or run)."""
    global _scratch
    with _scratch_lock:
        if _scratch is None:
            _scratch = duckdb.connect()
            _scratch.execute("SET enable_external_access = false")
            _scratch.execute("SET lock_configuration = true")
        row = _scratch.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    tree: dict[str, Any] = orjson.loads(row[0]) if row else {"error": True}
    return tree


def check(sql: str, catalog: Catalog) -> None:
    """Raise ``SQLRefused`` unless ``sql`` is one read-only query of known tables.

    A verdict depends only on the text and the catalog, so accepted queries are remembered
    (dashboards and API clients repeat the same few); a refusal is worked out again each time.
    """
    if len(sql) <= _CACHED_SQL_LENGTH:
        _check_cached(sql, catalog)
    else:
        _check(sql, catalog)


def _check(sql: str, catalog: Catalog) -> None:
    if len(sql) > MAX_SQL_LENGTH:
        raise SQLRefused(f"query is longer than {MAX_SQL_LENGTH} characters")
    if "\x00" in sql:
        raise SQLRefused("query contains a NUL character")
    _check_nesting(sql)
    try:
        _check_shape(sql)
        tree = _duckdb_tree(sql)
    except (RecursionError, orjson.JSONDecodeError):
        raise SQLRefused(_TOO_DEEP) from None
    if tree.get("error") and "depth" in str(tree.get("error_message", "")):
        raise SQLRefused(_TOO_DEEP)
    if tree.get("error"):
        raise SQLRefused(
            "query refused: only plain SELECT queries are accepted "
            "(PIVOT/SUMMARIZE/DESCRIBE statements are not)"
        )
    statements = tree.get("statements") or []
    if len(statements) != 1:
        raise SQLRefused("exactly one SELECT statement is allowed")
    try:
        _check_tree(statements[0], catalog, frozenset())
    except RecursionError:
        raise SQLRefused(_TOO_DEEP) from None


_TOO_DEEP = (
    f"query nests too deeply (at most {MAX_NESTING} levels of parentheses, and expressions "
    "of bounded depth): split it with WITH clauses"
)


def _check_nesting(sql: str) -> None:
    """Refuse deep nesting before any recursive parser sees it (strings and comments skipped)."""
    try:
        tokens = duckdb.tokenize(sql)
    except duckdb.Error:
        return  # the parsers report the syntax error
    text = sql.encode()  # token positions are byte offsets
    depth = 0
    for pos, kind in tokens:
        char = text[pos : pos + 1] if kind == duckdb.token_type.operator else b""
        if char and char in b"([{":
            depth += 1
            if depth > MAX_NESTING:
                raise SQLRefused(_TOO_DEEP)
        elif char and char in b")]}":
            depth -= 1


_CACHED_SQL_LENGTH = 16_384
_check_cached = functools.lru_cache(maxsize=512)(_check)


def _check_shape(sql: str) -> None:
    try:
        parsed = [s for s in sqlglot.parse(sql, read="duckdb", error_level=ErrorLevel.RAISE) if s]
    except SqlglotError:
        raise SQLRefused(
            "SQL syntax error (check the query near its first unusual token)"
        ) from None
    if len(parsed) != 1:
        raise SQLRefused("exactly one statement is allowed (remove the ';' and what follows)")
    root = parsed[0]
    if not isinstance(root, exp.Query | exp.Values):
        kind = root.key.upper() if root.key else "this"
        raise SQLRefused(f"{kind} statements are not allowed: only read-only SELECT queries run")
    for node in root.walk():
        if isinstance(node, _FORBIDDEN_NODES):
            raise SQLRefused(f"{node.key.upper()} is not allowed inside a read-only query")


def _check_tree(node: Any, catalog: Catalog, ctes: frozenset[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _check_tree(item, catalog, ctes)
        return
    if not isinstance(node, dict):
        return
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict):
        ctes = _check_ctes(cte_map.get("map") or [], catalog, ctes)
    kind = node.get("type")
    if "class" not in node and isinstance(kind, str) and kind in _TABLE_REFS:
        _check_table_ref(node, catalog, ctes)
    if "function_name" in node:
        _check_function(node, catalog)
    for key, value in node.items():
        if key != "cte_map" and isinstance(value, dict | list):
            _check_tree(value, catalog, ctes)


def _check_ctes(
    entries: list[dict[str, Any]], catalog: Catalog, ctes: frozenset[str]
) -> frozenset[str]:
    """Each CTE body is checked before its name enters scope (so ``WITH pg_settings AS
    (SELECT * FROM pg_settings)`` reads the catalog's ``pg_settings``, which is refused);
    only a ``WITH RECURSIVE`` body sees its own name. Returns the scope after the CTEs."""
    for entry in entries:
        name = str(entry.get("key", "")).lower()
        body = entry.get("value") or {}
        query = body.get("query_node") or {}
        recursive = (
            query.get("type") == "RECURSIVE_CTE_NODE"
            and str(query.get("cte_name", "")).lower() == name
        )
        _check_tree(body, catalog, ctes | {name} if recursive else ctes)
        ctes = ctes | {name}
    return ctes


def _check_table_ref(node: dict[str, Any], catalog: Catalog, ctes: frozenset[str]) -> None:
    kind = node["type"]
    if kind not in _ALLOWED_TABLE_REFS:
        raise SQLRefused(f"query refused: {kind.lower().replace('_', ' ')} is not allowed")
    if kind == "BASE_TABLE":
        name = str(node.get("table_name", ""))
        schema = str(node.get("schema_name", "")).lower()
        if node.get("catalog_name"):
            raise SQLRefused(f"unknown table {name!r} (catalog-qualified names are not allowed)")
        if node.get("at_clause"):
            raise SQLRefused("AT (...) is not supported here: pass as_of with the query instead")
        if not schema and name.lower() in ctes:
            return
        if not catalog.knows(schema, name):
            shown = f"{schema}.{name}" if schema else name
            raise SQLRefused(
                f"unknown table {shown!r}: queries may read only the pipeline's tables "
                "(GET /api/tables lists them)"
            )
    elif kind == "TABLE_FUNCTION":
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        if name not in ALLOWED_TABLE_FUNCTIONS or function.get("schema") or function.get("catalog"):
            raise SQLRefused(f"table function {name}() is not allowed: query the pipeline's tables")


def _check_function(node: dict[str, Any], catalog: Catalog) -> None:
    name = str(node.get("function_name", "")).lower()
    schema = str(node.get("schema") or "pg_catalog").lower()
    if (
        catalog.system
        and name in CATALOG_FUNCTIONS
        and schema == "pg_catalog"
        and not node.get("catalog")
    ):
        return
    if node.get("schema") or node.get("catalog"):
        raise SQLRefused(f"function {name}() is not allowed (qualified function names are not)")
    if node.get("is_operator") and _OPERATOR.match(name):
        return
    if name not in ALLOWED_FUNCTIONS:
        raise SQLRefused(
            f"function {name}() is not allowed: only pure scalar, aggregate and window "
            "functions may be called"
        )


__all__ = [
    "ALLOWED_FUNCTIONS",
    "ALLOWED_TABLE_FUNCTIONS",
    "CATALOG_FUNCTIONS",
    "SYSTEM_RELATIONS",
    "Catalog",
    "SQLRefused",
    "check",
]
