"""The narrower schema the decoder keeps to: unbounded integers held to JSON's interoperable range,
objects that name their properties given only those."""

from espalier.plugins.transformers_models.constrain import SAFE_INTEGER, bounded


def test_integers_without_bounds_get_the_safe_range_everywhere_and_given_bounds_stay():
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "kept": {"type": "integer", "minimum": 0, "exclusiveMaximum": 10},
            "maybe": {"type": ["integer", "null"]},
            "list": {"type": "array", "items": {"$ref": "#/$defs/count"}},
            "either": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
            "text": {"type": "string"},
        },
        "$defs": {"count": {"type": "integer"}},
    }
    out = bounded(schema)
    safe = {"minimum": -SAFE_INTEGER, "maximum": SAFE_INTEGER}
    assert out["properties"]["n"] == {"type": "integer", **safe}
    assert out["properties"]["kept"] == {"type": "integer", "minimum": 0, "exclusiveMaximum": 10}
    assert out["properties"]["maybe"] == {"type": ["integer", "null"], **safe}
    assert out["$defs"]["count"] == {"type": "integer", **safe}
    assert out["properties"]["either"]["anyOf"][0] == {"type": "integer", **safe}
    assert out["properties"]["text"] == {"type": "string"}
    assert schema["properties"]["n"] == {"type": "integer"}  # the caller's schema is not changed
    assert out["additionalProperties"] is False and "additionalProperties" not in schema


def test_only_objects_that_name_their_properties_are_closed():
    assert bounded({"type": "object"}) == {"type": "object"}  # json_object: any object
    open_ = {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "string"}}
    assert bounded(open_) == open_
    patterned = {"type": "object", "properties": {"a": {}}, "patternProperties": {"^x": {}}}
    assert bounded(patterned) == patterned


def test_parts_of_a_composed_object_are_not_closed():
    composed = {"allOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert bounded(composed) == composed  # each branch names part: closing one would refuse the other's
    referenced = {"$ref": "#/$defs/x", "properties": {"a": {}}}
    assert bounded(referenced) == referenced
