"""The tools API and the built-in tools: listing, schema checks, operator invocation, SQL, search."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, text


def test_list_tools_shows_schema_and_plugin(espalier):
    response = espalier.client.get("/api/tools", headers=espalier.headers("user"))
    assert response.status_code == 200
    tools = {t["name"]: t for t in response.json()["tools"]}
    assert {"calculator", "python", "finish", "sql", "search", "lookup"} <= set(tools)
    assert tools["calculator"]["plugin"] == "calculator"
    assert tools["calculator"]["parameters"]["required"] == ["expression"]


def test_operator_invokes_a_tool_and_it_is_audited(espalier):
    response = espalier.client.post(
        "/api/tools/calculator/invoke", json={"expression": "(12 + 30) * 1.5"}, headers=espalier.headers("operator")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["output"], body["data"], body["is_error"]) == ("63", 63, False)
    [event] = espalier.platform.audit.list(action="tool.invoke")
    assert event.target == "calculator" and event.details["arguments"] == ["expression"]


def test_users_invoke_the_tools_their_role_allows_but_not_sensitive_ones(espalier):
    # A user finishes a function-calling round trip with the tools its role allows...
    response = espalier.client.post(
        "/api/tools/calculator/invoke", json={"expression": "1+1"}, headers=espalier.headers("user")
    )
    assert response.status_code == 200 and response.json()["output"] == "2"
    # ...while code and queries (sensitive) stay an operator's to run directly,
    sandboxed = espalier.client.post(
        "/api/tools/python/invoke", json={"code": "answer = 1"}, headers=espalier.headers("user")
    )
    assert sandboxed.status_code == 403 and "sensitive" in sandboxed.json()["detail"]
    # and a tool above the key's role is refused as before.
    query = espalier.client.post("/api/tools/sql/invoke", json={"query": "select 1"}, headers=espalier.headers("user"))
    assert query.status_code == 403 and "operator" in query.json()["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [({}, "expression"), ({"expression": 12}, "expression"), ({"expression": "1", "extra": 1}, "arguments")],
)
def test_bad_arguments_are_a_400_naming_the_field(espalier, body, field):
    response = espalier.client.post("/api/tools/calculator/invoke", json=body, headers=espalier.headers("operator"))
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["details"]["field"] == field and field in error["detail"]


def test_unknown_tool_is_a_404_listing_the_tools(espalier):
    response = espalier.client.post("/api/tools/nope/invoke", json={}, headers=espalier.headers("operator"))
    assert response.status_code == 404 and "calculator" in response.text


def test_non_object_body_is_a_400(espalier):
    response = espalier.client.post("/api/tools/calculator/invoke", json=["1+1"], headers=espalier.headers("operator"))
    assert response.status_code == 400


def test_finish_returns_the_answer(espalier):
    call = espalier.platform.toolbox.call("finish", {"answer": " 42 "})
    assert call.result.output == "42" and not call.result.is_error


# SQL ----------------------------------------------------------------------------------------------
@pytest.fixture
def shop_db(tmp_path):
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
        connection.executemany(
            "INSERT INTO items (name, price) VALUES (?, ?)", [(f"item {i}", i * 1.5) for i in range(300)]
        )
    return path


@pytest.fixture
def espalier_settings(request):
    if "shop_db" in request.fixturenames:
        return {
            "sql_tool_url": f"sqlite:///{request.getfixturevalue('shop_db')}",
            "sql_tool_max_rows": 100,
            "sql_tool_timeout_ms": 1000,
            "default_retriever": "keywords",
        }
    return {"default_retriever": "keywords"}  # the test retriever, not the built-in hybrid search


def sql(espalier, **arguments):
    response = espalier.client.post("/api/tools/sql/invoke", json=arguments, headers=espalier.headers("operator"))
    assert response.status_code == 200, response.text
    return response.json()


def test_sql_reads_with_bound_parameters(espalier, shop_db):
    body = sql(espalier, query="SELECT name, price FROM items WHERE id = :id", params={"id": 3})
    assert not body["is_error"] and body["data"]["rows"] == [{"name": "item 2", "price": 3.0}]


def test_sql_caps_rows(espalier, shop_db):
    body = sql(espalier, query="SELECT id FROM items", max_rows=500)
    assert len(body["data"]["rows"]) == 100 and body["data"]["truncated"]
    assert len(sql(espalier, query="SELECT id FROM items", max_rows=5)["data"]["rows"]) == 5


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM items",
        "SELECT 1; DELETE FROM items",
        "DROP TABLE items",
        "ATTACH DATABASE '/tmp/x.db' AS x",
    ],
)
def test_sql_refuses_writes_up_front(espalier, shop_db, query):
    body = sql(espalier, query=query)
    assert body["is_error"]
    assert sql(espalier, query="SELECT count(*) AS n FROM items")["data"]["rows"] == [{"n": 300}]


def test_sql_read_only_holds_even_past_the_keyword_check(espalier, shop_db):
    # WITH ... INSERT passes "starts with WITH": the database itself must refuse it.
    body = sql(espalier, query="WITH x AS (SELECT 1) INSERT INTO items (name, price) SELECT 'evil', 0 FROM x")
    reason = body["output"].replace("-", "").replace(" ", "").lower()
    assert body["is_error"] and ("readonly" in reason or "notauthorized" in reason)
    assert sql(espalier, query="SELECT count(*) AS n FROM items")["data"]["rows"] == [{"n": 300}]


@pytest.mark.parametrize(
    "query",
    [
        "SELECT length(zeroblob(900000000)) AS n",
        "SELECT length(randomblob(900000000)) AS n",
        "SELECT hex(fts3_tokenizer('simple')) AS t",
        "SELECT load_extension('/tmp/evil.so') AS x",
        "SELECT * FROM pragma_compile_options",
        "WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT length(s) FROM r",
    ],
)
def test_sqlite_admits_only_functions_that_read_and_bounded_values(espalier, shop_db, query):
    body = sql(espalier, query=query)
    assert body["is_error"], body
    assert any(word in body["output"] for word in ("not authorized", "too big", "interrupted")), body["output"]
    # what a reader needs still works
    rows = sql(
        espalier,
        query="SELECT upper(name) AS n, round(avg(price), 1) AS p, json_object('k', count(*)) AS j, "
        "row_number() OVER (ORDER BY id) AS r FROM items WHERE id < 3 GROUP BY id ORDER BY id",
    )
    assert not rows["is_error"] and rows["data"]["rows"][0] == {"n": "ITEM 0", "p": 0.0, "j": '{"k":1}', "r": 1}


def test_sql_runaway_query_is_stopped(espalier, shop_db):
    import time

    started = time.monotonic()
    body = sql(espalier, query="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c")
    assert body["is_error"] and "interrupted" in body["output"] and time.monotonic() - started < 3 + 5
    assert sql(espalier, query="SELECT count(*) AS n FROM items")["data"]["rows"] == [{"n": 300}]


def test_sql_without_a_database_says_how_to_configure_it(espalier):
    body = sql(espalier, query="SELECT 1")
    assert body["is_error"] and "ESPALIER_SQL_TOOL_URL" in body["output"]


def test_sql_on_postgresql_is_read_only(postgres_url):
    from espalier.plugins.sql_tool import SqlTool

    engine = create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE t (v integer)"))
        connection.execute(text("INSERT INTO t VALUES (1), (2), (3)"))
    tool = SqlTool()
    tool.configure(postgres_url, max_rows=2)
    try:
        result = tool.invoke({"query": "SELECT v FROM t WHERE v >= :low ORDER BY v", "params": {"low": 1}})
        assert result.data["rows"] == [{"v": 1}, {"v": 2}] and result.data["truncated"]
        evil = tool.invoke({"query": "WITH d AS (DELETE FROM t RETURNING v) SELECT count(*) FROM d"})
        assert evil.is_error and "read-only" in evil.output
        slow = tool.invoke({"query": "SELECT pg_sleep(10)"})
        assert slow.is_error  # the statement timeout (5 s) stops it
    finally:
        tool.configure(None)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM t")).scalar() == 3
    engine.dispose()


# Search and lookup over a registered retriever ----------------------------------------------------
def test_search_and_lookup_use_the_registered_retriever(espalier, agent_plugin):
    agent_plugin.retriever.collections["trees"] = [
        ("c1", "An espalier is a tree trained to grow flat against a wall. Apples are often grown this way."),
        ("c2", "Pears can also be trained on a frame."),
    ]
    headers = espalier.headers("operator")
    found = espalier.client.post(
        "/api/tools/search/invoke", json={"query": "espalier wall", "collection": "trees"}, headers=headers
    ).json()
    assert not found["is_error"] and found["output"].startswith("[c1] An espalier")
    looked = espalier.client.post(
        "/api/tools/lookup/invoke", json={"term": "apples", "collection": "trees"}, headers=headers
    ).json()
    assert looked["output"] == "[c1] Apples are often grown this way."
    missing = espalier.client.post("/api/tools/search/invoke", json={"query": "x"}, headers=headers).json()
    assert missing["is_error"] and "collection" in missing["output"]
