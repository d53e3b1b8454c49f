"""Built-in ``sql`` retriever: passages from a table or view of an operator's database
(``ESPALIER_SQL_RETRIEVER_*``), for grounded answers (``espalier.retriever: "sql"``) and agents.

Read only at the database: SQLite is opened with ``mode=ro``, PostgreSQL sessions default to
read-only transactions, each search also runs ``SET TRANSACTION READ ONLY`` and is rolled back.
Nothing from a request becomes SQL text: identifiers come from settings and are checked against
the reflected schema at start-up; the query's words go in as bound ``LIKE`` patterns (escaped),
filter values as bound parameters, and the scan is capped by a row limit. Rows are ranked by how
many query words they contain, rarer words counting more.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import MetaData, String, Table, cast, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from espalier import hookimpl
from espalier.core.infrastructure.contracts import RetrievedChunk
from espalier.core.infrastructure.errors import Forbidden, InvalidInput, NotFound, Unavailable
from espalier.plugins.common.sql import read_only_connection, read_only_engine

log = logging.getLogger("espalier.plugins.sql_retriever")

WORD = re.compile(r"\w{2,}", re.UNICODE)
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have how in is it its of on or the this that to was "
    "were what when where which who whom whose why will with".split()
)
MAX_TERMS = 8


def query_terms(query: str) -> list[str]:
    """Distinct lower-cased words of the query, stopwords left out, at most ``MAX_TERMS``."""
    words = [w.lower() for w in WORD.findall(query)]
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS))[:MAX_TERMS]


def like_pattern(term: str) -> str:
    return "%" + term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class SqlRetriever:
    name = "sql"
    description = "Rows of the configured database table or view whose text columns contain the query's words"
    searches_collections = False  # `collection` names the configured table, not an Espalier collection

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.table: Table | None = None
        self.text_columns: list[str] = []
        self.id_column = ""
        self.filter_columns: list[str] = []
        self.max_rows = 20
        self.scan_rows = 1000
        self.timeout_ms = 5000
        self.role = "user"
        self.problem = "The sql retriever has no database: an operator sets ESPALIER_SQL_RETRIEVER_URL and _TABLE."

    # Configuration ----------------------------------------------------------------------------
    def configure(
        self,
        url: str | None,
        *,
        table: str | None,
        text_columns: Sequence[str],
        id_column: str | None,
        filter_columns: Sequence[str] = (),
        max_rows: int = 20,
        scan_rows: int = 1000,
        timeout_ms: int = 5000,
        role: str = "user",
    ) -> None:
        """Connects read-only and reflects the table; wrong names raise ValueError saying which."""
        self.close()
        self.max_rows, self.scan_rows, self.timeout_ms, self.role = max_rows, scan_rows, timeout_ms, role
        if not url:
            return
        if not table or not text_columns:
            raise ValueError(
                "ESPALIER_SQL_RETRIEVER_TABLE and ESPALIER_SQL_RETRIEVER_TEXT_COLUMNS must be set with its URL"
            )
        engine = read_only_engine(url, timeout_ms=timeout_ms)
        schema, _, name = table.rpartition(".")
        try:
            reflected = Table(name, MetaData(), schema=schema or None, autoload_with=engine)
        except NoSuchTableError:
            engine.dispose()
            raise ValueError(f"no table or view '{table}' in the sql retriever's database") from None
        except SQLAlchemyError as exc:
            engine.dispose()
            raise ValueError(f"cannot read the sql retriever's database ({exc.__class__.__name__})") from None
        columns = set(reflected.columns.keys())
        id_column = id_column or next((c.name for c in reflected.primary_key.columns), None)
        if id_column is None:
            engine.dispose()
            raise ValueError(f"'{table}' has no primary key: set ESPALIER_SQL_RETRIEVER_ID_COLUMN")
        wanted = {"text": list(text_columns), "id": [id_column], "filter": list(filter_columns)}
        for kind, names in wanted.items():
            missing = [n for n in names if n not in columns]
            if missing:
                engine.dispose()
                raise ValueError(
                    f"{kind} column(s) {', '.join(missing)} not in '{table}' (it has {', '.join(sorted(columns))})"
                )
        self.engine, self.table = engine, reflected
        self.text_columns, self.id_column, self.filter_columns = list(text_columns), id_column, list(filter_columns)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
        self.engine = self.table = None

    def sources(self) -> list[str]:
        return [self.table.fullname] if self.table is not None else []

    def authorize(self, principal: Any) -> None:
        if principal is None or not principal.has_role(self.role):
            raise Forbidden(
                f"the sql retriever is for keys with role '{self.role}' or above (ESPALIER_SQL_RETRIEVER_ROLE)"
            )

    # Search -----------------------------------------------------------------------------------
    def search(
        self, query: str, *, collection: str = "", k: int = 5, filters: Mapping[str, Any] | None = None
    ) -> list[RetrievedChunk]:
        if self.engine is None or self.table is None:
            raise Unavailable(self.problem, code="sql_retriever_unconfigured")
        if collection and collection != self.table.fullname:
            raise NotFound(f"the sql retriever reads '{self.table.fullname}', not '{collection}'")
        if not 1 <= k <= 50:
            raise InvalidInput("k must be between 1 and 50")
        unknown = set(filters or {}) - set(self.filter_columns)
        if unknown:
            raise InvalidInput(
                f"the sql retriever filters on {', '.join(self.filter_columns) or 'no columns'}; "
                f"not {', '.join(sorted(unknown))}"
            )
        terms = query_terms(query)
        if not terms:
            return []
        table = self.table
        texts = [cast(table.c[name], String) for name in self.text_columns]
        statement = (
            select(table.c[self.id_column], *texts, *(table.c[n] for n in self.filter_columns))
            .where(or_(*(text.ilike(like_pattern(term), escape="\\") for term in terms for text in texts)))
            .limit(self.scan_rows)
        )
        for name, value in (filters or {}).items():
            statement = statement.where(table.c[name] == value)
        rows = self._run(statement)
        return self._rank(rows, terms, k)

    def _run(self, statement: Any) -> list[Any]:
        assert self.engine is not None
        try:
            with read_only_connection(self.engine, self.timeout_ms) as connection:
                return list(connection.execute(statement))
        except SQLAlchemyError as exc:
            log.warning("sql retriever query failed: %s", exc.__class__.__name__, exc_info=True)
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200]
            raise Unavailable(
                f"the sql retriever's database failed ({reason}); check ESPALIER_SQL_RETRIEVER_URL",
                code="sql_retriever_unavailable",
            ) from None

    def _rank(self, rows: list[Any], terms: list[str], k: int) -> list[RetrievedChunk]:
        bodies = []
        for row in rows:
            parts = [str(value) for value in row[1 : 1 + len(self.text_columns)] if value is not None]
            bodies.append("\n".join(parts))
        lowered = [body.lower() for body in bodies]
        # a word in fewer of the matching rows tells more (idf over the scanned rows)
        weight = {t: math.log(1 + len(rows) / (1 + sum(t in body for body in lowered))) for t in terms}
        total = sum(weight.values()) or 1.0
        scored = []
        for row, body, low in zip(rows, bodies, lowered, strict=True):
            score = sum(weight[t] for t in terms if t in low) / total
            scored.append((score, row, body))
        scored.sort(key=lambda item: item[0], reverse=True)
        out = []
        name = self.table.fullname if self.table is not None else ""
        for score, row, body in scored[: min(k, self.max_rows)]:
            identifier = str(row[0])
            filters = {
                n: _scalar(v) for n, v in zip(self.filter_columns, row[1 + len(self.text_columns) :], strict=True)
            }
            out.append(
                RetrievedChunk(
                    document_id=f"{name}:{identifier}",
                    chunk_id=f"{name}:{identifier}",
                    text=body,
                    score=round(score, 6),
                    source=f"sql:{name}/{identifier}",
                    span=(0, len(body)),
                    metadata={"table": name, "id": identifier, **filters},
                )
            )
        return out


def _scalar(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool, type(None))) else str(value)


@hookimpl(trylast=True)
def register_retrievers(register):
    register(SqlRetriever())


def _bound(platform: Any) -> SqlRetriever | None:
    retriever = platform.retrievers.get("sql") if "sql" in platform.retrievers else None
    return retriever if isinstance(retriever, SqlRetriever) else None


@hookimpl
def startup(platform):
    retriever = _bound(platform)
    if retriever is None:
        return
    s = platform.settings
    try:
        retriever.configure(
            s.sql_retriever_url,
            table=s.sql_retriever_table,
            text_columns=s.sql_retriever_text_columns,
            id_column=s.sql_retriever_id_column,
            filter_columns=s.sql_retriever_filter_columns,
            max_rows=s.sql_retriever_max_rows,
            scan_rows=s.sql_retriever_scan_rows,
            timeout_ms=s.sql_retriever_timeout_ms,
            role=s.sql_retriever_role,
        )
    except ValueError as exc:
        retriever.problem = f"The sql retriever is misconfigured: {exc}."
        log.error("%s", retriever.problem)


@hookimpl
def shutdown(platform):
    retriever = _bound(platform)
    if retriever is not None:
        retriever.close()
