"""Tools from plain typed functions (``@espalier.tool``): the schema from type hints and the
docstring, argument checks, results, and such a tool on the same paths as any other (listing,
invoking, roles) through the real app."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import Field

import espalier
from espalier import hookimpl
from espalier.core.infrastructure.errors import InvalidInput


@espalier.tool(min_role="user")
def convert(amount: Annotated[float, Field(ge=0)], unit: Literal["km", "mi"] = "km", places: int = 2) -> str:
    """Convert a distance between kilometres and miles.

    Args:
        amount: the distance to convert
        unit: the unit it is in; the other one is
            what comes back
        places: decimals in the answer
    """
    factor = 0.621371 if unit == "km" else 1 / 0.621371
    return f"{amount * factor:.{places}f} {'mi' if unit == 'km' else 'km'}"


@espalier.tool(name="stats", min_role="operator", trusted_output=True)
def statistics(values: list[int]) -> dict:
    """Count and sum of whole numbers."""
    return {"count": len(values), "sum": sum(values)}


def test_the_schema_comes_from_the_hints_and_the_docstring():
    schema = convert.parameters
    assert convert.name == "convert" and convert.description == "Convert a distance between kilometres and miles."
    assert schema["required"] == ["amount"] and schema["additionalProperties"] is False
    assert schema["properties"]["amount"] == {"type": "number", "minimum": 0, "description": "the distance to convert"}
    assert schema["properties"]["unit"]["enum"] == ["km", "mi"] and schema["properties"]["unit"]["default"] == "km"
    assert schema["properties"]["unit"]["description"] == "the unit it is in; the other one is what comes back"
    assert statistics.parameters["properties"]["values"] == {"type": "array", "items": {"type": "integer"}}
    assert convert(10) == "6.21 mi"  # still the plain function


def test_invoking_checks_the_arguments_and_shapes_the_result():
    assert convert.invoke({"amount": 5, "unit": "mi"}).output == "8.05 km"
    result = statistics.invoke({"values": [1, 2, 3]})
    assert result.data == {"count": 3, "sum": 6} and '"sum": 6' in result.output
    with pytest.raises(InvalidInput, match="amount"):
        convert.invoke({"amount": -1})
    with pytest.raises(InvalidInput, match="extra"):
        convert.invoke({"amount": 1, "extra": True})


class FunctionToolPlugin:
    @hookimpl
    def register_tools(self, register):
        register(convert)
        register(statistics)


@pytest.fixture
def espalier_plugins():
    return [FunctionToolPlugin()]


def test_function_tools_take_the_same_paths_as_any_tool(espalier):
    listed = {t["name"]: t for t in espalier.client.get("/api/tools", headers=espalier.headers("user")).json()["tools"]}
    assert listed["convert"]["min_role"] == "user" and listed["stats"]["min_role"] == "operator"
    assert listed["convert"]["parameters"]["properties"]["unit"]["enum"] == ["km", "mi"]
    called = espalier.client.post(
        "/api/tools/stats/invoke", json={"values": [4, 5]}, headers=espalier.headers("operator")
    ).json()
    assert called["data"] == {"count": 2, "sum": 9} and not called["is_error"]
    bad = espalier.client.post(
        "/api/tools/convert/invoke", json={"amount": "far"}, headers=espalier.headers("operator")
    )
    assert bad.status_code == 400 and bad.json()["details"]["field"] == "amount"
