"""Agents' tools read with the rights of the key that started the run: a user's agent cannot
search a collection that user may not read (real collections, real chromadb and MiniLM; the
scripted model only picks the actions)."""

from __future__ import annotations

import pytest

PRIVATE = "The vault code for the Lisbon office is 4417, known only to finance."


@pytest.fixture
def private_collection(espalier):
    """'finance-notes', owned by a second user key; nobody else with role user may read it."""
    owner = espalier.platform.keys.create(name="finance", role="user").key
    headers = {"Authorization": f"Bearer {owner}"}
    assert espalier.client.post("/api/collections", json={"name": "finance-notes"}, headers=headers).status_code == 201
    added = espalier.client.post(
        "/api/collections/finance-notes/documents", headers=headers, json={"filename": "vault.txt", "text": PRIVATE}
    )
    assert added.status_code == 201, added.text
    return headers


def search_run(espalier, agent_plugin, headers):
    agent_plugin.provider.script = [
        ' I will look it up.\nAction: {"tool": "search", "arguments": {"query": "vault code Lisbon", '
        '"collection": "finance-notes", "retriever": "hybrid"}}',
        " Done.\nAction: finish[done]",
    ]
    response = espalier.client.post(
        "/api/agents/react/runs",
        headers=headers,
        json={"question": "What is the vault code?", "model": "scripted", "tools": ["search"]},
    )
    assert response.status_code == 200, response.text
    return response.json()["trace"][0]


def test_an_agent_cannot_search_a_collection_its_key_may_not_read(espalier, agent_plugin, private_collection):
    step = search_run(espalier, agent_plugin, espalier.headers("user"))
    assert step["action"] == "search" and step["is_error"]
    assert "may not read collection 'finance-notes'" in step["observation"]
    assert "4417" not in str(agent_plugin.provider.prompts)  # the passage never reached the model


def test_the_owner_and_operators_can(espalier, agent_plugin, private_collection):
    for headers in (private_collection, espalier.headers("operator")):
        step = search_run(espalier, agent_plugin, headers)
        assert not step["is_error"] and "4417" in step["observation"]


def test_a_direct_operator_call_and_an_in_process_call_are_not_limited(espalier, private_collection):
    arguments = {"query": "vault code", "collection": "finance-notes", "retriever": "hybrid"}
    direct = espalier.client.post("/api/tools/search/invoke", json=arguments, headers=espalier.headers("operator"))
    assert direct.status_code == 200 and "4417" in direct.json()["output"]
    assert "4417" in espalier.platform.toolbox.call("search", arguments).result.output  # no key: the CLI


# Who may run a tool: one check on every path ---------------------------------------------------
def agent_run(espalier, headers, tools):
    return espalier.client.post(
        "/api/agents/react/runs",
        headers=headers,
        json={"question": "How many items?", "model": "scripted", "tools": tools},
    )


def test_a_user_cannot_hand_an_operator_tool_to_an_agent(espalier, agent_plugin):
    refused = agent_run(espalier, espalier.headers("user"), ["sql"])
    assert refused.status_code == 403 and refused.json()["code"] == "tool_forbidden"
    assert "'sql' is for keys with role 'operator'" in refused.json()["detail"]
    # nothing was started for it
    runs = espalier.client.get("/api/agents/runs", headers=espalier.headers("user")).json()
    assert runs.get("runs", runs.get("data", [])) == []
    # the same check inside the toolbox, whatever calls it (a chain, a plugin)
    user = espalier.platform.keys.authenticate(espalier.keys["user"])
    with pytest.raises(Exception, match="tool 'sql' is for keys with role 'operator'"):
        espalier.platform.toolbox.call("sql", {"query": "SELECT 1"}, by=user)
    # GET /api/tools says who may run each
    listed = espalier.client.get("/api/tools", headers=espalier.headers("operator")).json()
    roles = {t["name"]: t["min_role"] for t in listed.get("tools", listed.get("data", []))}
    assert roles["sql"] == "operator" and roles["calculator"] == "user"


class TestOperatorsSetEachToolsRole:
    @pytest.fixture
    def espalier_settings(self):
        return {"tool_roles": {"calculator": "operator"}}

    def test_a_role_set_for_a_tool_holds_for_agents(self, espalier, agent_plugin):
        refused = agent_run(espalier, espalier.headers("user"), ["calculator"])
        assert refused.status_code == 403 and "ESPALIER_TOOL_ROLES" in refused.json()["detail"]
        agent_plugin.provider.script = [" Done.\nAction: finish[done]"]
        assert agent_run(espalier, espalier.headers("operator"), ["calculator"]).status_code == 200

    def test_an_agents_default_tools_leave_out_those_the_key_may_not_run(self, espalier, agent_plugin):
        user = espalier.platform.keys.authenticate(espalier.keys["user"])
        operator = espalier.platform.keys.authenticate(espalier.keys["operator"])
        for_user = espalier.platform.agent_runs.prepare("react", "How many?", user, model="scripted")
        for_operator = espalier.platform.agent_runs.prepare("react", "How many?", operator, model="scripted")
        assert "calculator" not in for_user.tools and "search" in for_user.tools
        assert "calculator" in for_operator.tools
