"""The TelemetryPolicy's `model` label can only take the values of the models we serve, or
`other` (tests/cluster/SOURCES.md §16: a label is whatever its CEL expression yields, and each
distinct value is a Prometheus series; Kuadrant wraps it as `string(<expr>)` and drops a label
whose expression fails, kuadrant-operator internal/wasm/action_spec.go bindingsToDescriptor).

`requestBodyJSON(pointer)` is Kuadrant's function over the request body's JSON (kuadrant-operator
internal/cel/kuadrant_validator.go); here it reads a JSON pointer from the test's body.
"""

from __future__ import annotations

import json
from typing import Any

import celpy
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from shared.policies import OTHER_MODEL, generate_policies
from shared.settings import Settings

CATALOG = ["qwen3-0-6b-instruct", "vllm-simulator"]


def label_for(body: Any, models: list[str]) -> str | None:
    (telemetry,) = [p for p in generate_policies([], Settings(), models=models) if p["kind"] == "TelemetryPolicy"]
    expression = f'string({telemetry["spec"]["metrics"]["default"]["labels"]["model"]})'

    def request_body_json(pointer: celpy.celtypes.StringType) -> Any:
        value: Any = body
        for part in str(pointer).lstrip("/").split("/"):
            if not isinstance(value, dict) or part not in value:
                raise celpy.CELEvalError("no such key", KeyError, (str(pointer),))  # no label
            value = value[part]
        return celpy.json_to_cel(value)

    env = celpy.Environment()
    try:
        result = env.program(env.compile(expression), functions={"requestBodyJSON": request_body_json}).evaluate({})
    except celpy.CELEvalError:
        return None
    return None if isinstance(result, celpy.CELEvalError) else str(result)


@pytest.mark.parametrize(("body", "labels"), [
    ({"model": "qwen3-0-6b-instruct"}, {"qwen3-0-6b-instruct"}),
    ({"model": "vllm-simulator", "messages": []}, {"vllm-simulator"}),
    ({"model": "not-served"}, {OTHER_MODEL}),
    ({"model": 7}, {OTHER_MODEL}),
    ({"model": ["qwen3-0-6b-instruct"]}, {OTHER_MODEL, None}),  # CEL engines differ on string(list)
    ({"prompt": "no model at all"}, {None}),
])
def test_known_models_keep_their_name_and_the_rest_is_other(body: Any, labels: set[str | None]) -> None:
    assert label_for(body, CATALOG) in labels


@hypothesis_settings(max_examples=200, derandomize=True, deadline=None)
@given(st.one_of(st.text(max_size=40), st.integers(), st.floats(allow_nan=False), st.booleans(),
                 st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.text(max_size=5),
                                                                            max_size=2)))
def test_no_body_can_mint_a_new_label_value(model: Any) -> None:
    assert label_for({"model": model}, CATALOG) in {*CATALOG, OTHER_MODEL, None}  # None: no label


def test_an_empty_catalog_counts_everything_as_other() -> None:
    assert label_for({"model": "anything"}, []) == OTHER_MODEL


def test_names_that_need_escaping_stay_exact() -> None:
    odd = ['a"b', "c\\d"]
    assert label_for({"model": 'a"b'}, odd) == 'a"b'
    assert label_for({"model": json.loads('"c\\\\d"')}, odd) == "c\\d"
