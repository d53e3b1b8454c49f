"""How a plugin author tests a plugin: the `espalier` fixture (shipped with Espalier) gives a
real app with the plugin registered."""

import espalier_hello
import pytest


@pytest.fixture
def espalier_plugins():
    return [espalier_hello]


def test_route_answers_users(espalier):
    response = espalier.client.get("/api/hello?name=Ada", headers=espalier.headers("user"))
    assert response.status_code == 200
    assert response.json() == {"message": "Hello, Ada!", "from_key": "test-user"}


def test_route_needs_a_key(espalier):
    assert espalier.client.get("/api/hello").status_code == 401


def test_tool_is_registered_and_counts(espalier):
    entry = espalier.platform.tools.entry("word_count")
    assert entry.plugin == "espalier_hello"
    assert entry.item.invoke({"text": "one two three"}).data == 3
