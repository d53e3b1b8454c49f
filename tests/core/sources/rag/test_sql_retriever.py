"""The ``sql`` retriever on the real SQLite and the real PostgreSQL: keyword ranking, filters, row
limits, read-only connections, identifiers checked against the reflected schema, hostile query
text kept as data; then a grounded answer through /v1/chat/completions naming the retriever."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from espalier.api.testing import build_harness
from espalier.core.infrastructure.errors import Forbidden, InvalidInput, NotFound
from espalier.plugins.sql_retriever import SqlRetriever

ROWS = [
    (1, "Lighthouse", "The Eddystone lighthouse stands on rocks south of Plymouth.", "buildings"),
    (2, "Bridge", "The Forth Bridge is a cantilever railway bridge in Scotland.", "buildings"),
    (3, "Falcon", "The peregrine falcon is the fastest bird, diving at over 300 km/h.", "animals"),
    (4, "Otter", "Sea otters hold hands while sleeping so they do not drift apart.", "animals"),
    (5, "Percent", "A 100% cotton shirt; the_underscore is literal here.", "misc"),
]


def make_source(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "CREATE TABLE facts (fact_id INTEGER PRIMARY KEY, title VARCHAR(100), body TEXT, category VARCHAR(40))"
            )
        )
        connection.execute(
            text("INSERT INTO facts VALUES (:i, :t, :b, :c)"), [dict(zip("itbc", row, strict=True)) for row in ROWS]
        )
        connection.execute(
            text("CREATE VIEW animal_facts AS SELECT fact_id, title, body FROM facts WHERE category = 'animals'")
        )
    engine.dispose()


def count(url: str) -> int:
    engine = create_engine(url)
    with engine.connect() as connection:
        value = connection.execute(text("SELECT count(*) FROM facts")).scalar_one()
    engine.dispose()
    return value


def test_search_filters_limits_and_read_only(database_url):
    make_source(database_url)
    retriever = SqlRetriever()
    retriever.configure(
        database_url,
        table="facts",
        text_columns=["title", "body"],
        id_column=None,
        filter_columns=["category"],
        max_rows=2,
    )
    try:
        assert retriever.id_column == "fact_id"  # the primary key when none is named
        hits = retriever.search("Which bird is the fastest?", collection="facts", k=5)
        assert hits[0].source == "sql:facts/3" and "peregrine" in hits[0].text and hits[0].score > 0
        assert hits[0].metadata == {"table": "facts", "id": "3", "category": "animals"}
        assert len(retriever.search("the bridge lighthouse otters falcon", k=5)) == 2  # max_rows caps k
        filtered = retriever.search("bridge lighthouse", k=5, filters={"category": "animals"})
        assert filtered == []
        assert [h.source for h in retriever.search("bridge", k=5, filters={"category": "buildings"})] == ["sql:facts/2"]
        # LIKE wildcards in the query are literal, and quotes are data, not SQL
        assert [h.source for h in retriever.search("100%", k=5)] == ["sql:facts/5"]
        assert retriever.search("xx_yy", k=5) == []
        assert retriever.search("'; DROP TABLE facts; --", k=5) == []
        assert retriever.search('" OR 1=1 --', k=5) == []
        assert count(database_url) == len(ROWS)
        with pytest.raises(InvalidInput):
            retriever.search("bridge", filters={"body": "x"})  # not a filter column
        with pytest.raises(NotFound):
            retriever.search("bridge", collection="users")
        # the connection itself refuses writes
        with retriever.engine.connect() as connection, pytest.raises(Exception, match="(?i)read.?only|not authorized"):
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("SET TRANSACTION READ ONLY")
            connection.execute(text("DELETE FROM facts"))
        assert count(database_url) == len(ROWS)
    finally:
        retriever.close()


def test_views_and_identifiers_are_checked_against_the_schema(database_url):
    make_source(database_url)
    retriever = SqlRetriever()
    try:
        retriever.configure(database_url, table="animal_facts", text_columns=["body"], id_column="fact_id")
        assert [h.source for h in retriever.search("otters sleeping", k=3)] == ["sql:animal_facts/4"]
        assert retriever.search("bridge", k=3) == []  # the view hides the other rows
        with pytest.raises(ValueError, match="not in 'facts'"):
            retriever.configure(database_url, table="facts", text_columns=["body; DROP TABLE facts"], id_column=None)
        with pytest.raises(ValueError, match="no table or view"):
            retriever.configure(database_url, table="nope", text_columns=["body"], id_column=None)
        with pytest.raises(ValueError, match="no primary key"):
            retriever.configure(database_url, table="animal_facts", text_columns=["body"], id_column=None)
    finally:
        retriever.close()
    assert count(database_url) == len(ROWS)


@pytest.mark.slow  # SmolLM2 answers
def test_grounded_chat_names_the_sql_retriever(tmp_path, model_cache_dir):
    url = f"sqlite:///{tmp_path / 'facts.db'}"
    make_source(url)
    settings = dict(
        model_cache_dir=model_cache_dir,
        sql_retriever_url=url,
        sql_retriever_table="facts",
        sql_retriever_text_columns=["title", "body"],
        sql_retriever_filter_columns=["category"],
    )
    for app in build_harness(tmp_path / "home", [], **settings):
        models = app.client.get("/v1/models", headers=app.headers("user")).json()["data"]
        rag = next(m for m in models if m["id"] == "rag")
        assert "sql" in rag["espalier"]["retrievers"] and rag["espalier"]["alias_of"] == "smollm2-135m-instruct"
        assert app.client.get("/v1/models/rag", headers=app.headers("user")).json() == rag
        body = {
            "model": "rag",
            "max_tokens": 24,
            "temperature": 0,
            "messages": [{"role": "user", "content": "Which bird is the fastest?"}],
            "espalier": {"retriever": "sql"},
        }
        response = app.client.post("/v1/chat/completions", json=body, headers=app.headers("user"))
        assert response.status_code == 200, response.text
        sources = response.json()["espalier"]["sources"]
        assert sources[0]["source"] == "sql:facts/3" and sources[0]["collection"] == "facts"
        # the same with an explicit collection on another model name
        body = {**body, "model": "smollm2-135m-instruct", "espalier": {"retriever": "sql", "collections": ["facts"]}}
        assert (
            app.client.post("/v1/chat/completions", json=body, headers=app.headers("user")).json()["espalier"][
                "sources"
            ][0]["source"]
            == "sql:facts/3"
        )
        unknown = app.client.post(
            "/v1/chat/completions",
            json={**body, "espalier": {"retriever": "nope", "collections": ["facts"]}},
            headers=app.headers("user"),
        )
        assert unknown.status_code == 400 and "no retriever 'nope'" in unknown.json()["error"]["message"]
        app.platform.retrievers.get("sql").role = "operator"
        denied = app.client.post("/v1/chat/completions", json=body, headers=app.headers("user"))
        assert denied.status_code == 403
    with pytest.raises(Forbidden):
        SqlRetriever().authorize(None)
