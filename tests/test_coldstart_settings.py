"""shared/settings.py reads the environment by itself, as pydantic-settings did (issue 12: the
import of pydantic-settings was ~30 ms of every target's cold start). pydantic-settings is
still installed, so it stands here as the oracle: for any environment and any arguments, the
input our reader hands the model is the one pydantic-settings would have handed it. Same
input, same model: the same values, the same errors under the same names."""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from pydantic import BaseModel, Field, create_model, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared import settings as settings_module
from shared.settings import ConfigurationError, Settings, load_settings


class _Recording(BaseSettings):
    """Settings' configuration, as it was when Settings was a BaseSettings."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _record(cls, data: Any) -> Any:
        _RECORDED.append(dict(data))
        return {}


_RECORDED: list[dict[str, Any]] = []
# Settings' fields, names and variables, each taking anything: only the input is compared.
_Oracle: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "_Oracle",
    __base__=_Recording,
    **{name: (object, Field(default=None, validation_alias=field.validation_alias))
       for name, field in Settings.model_fields.items()},
)


def _oracle_input(given: dict[str, object]) -> dict[str, Any]:
    _RECORDED.clear()
    _Oracle(**given)
    (recorded,) = _RECORDED
    return recorded


def _names() -> list[str]:
    """Every name a setting can be given by: its variables and its field name."""
    found: list[str] = []
    for name, field in Settings.model_fields.items():
        found.extend(settings_module._names(name, field))
    return sorted(set(found))


_NAMES = _names()
_SOME_NAMES = st.sampled_from(_NAMES + ["UNRELATED", "PATH", "maas_nonsense"])
_CASED = st.tuples(_SOME_NAMES, st.sampled_from(["as is", "lower", "upper"])).map(
    lambda pair: pair[0] if pair[1] == "as is" else pair[0].lower() if pair[1] == "lower" else pair[0].upper())
_VALUES = st.sampled_from(["", "kubernetes", "8443", "-1", "true", "nope", "7d", "llm-keys", "x" * 40])


def test_the_names_are_the_documented_variables_and_the_field_names() -> None:
    assert settings_module._names("namespace", Settings.model_fields["namespace"]) == (
        "MAAS_NAMESPACE", "NAMESPACE", "namespace")
    assert settings_module._names("store", Settings.model_fields["store"]) == ("MAAS_STORE", "store")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environment=st.dictionaries(_CASED, _VALUES, max_size=6), arguments=st.dictionaries(_CASED, _VALUES, max_size=3))
def test_the_model_gets_what_pydantic_settings_gave_it(environment: dict[str, str],
                                                        arguments: dict[str, object]) -> None:
    # Two of a field's names spelled as declared (`namespace=`, `MAAS_NAMESPACE=`): which one an
    # error would name was up to pydantic-settings' set order (the string hash seed).
    assume(all(len([key for key in arguments if key in settings_module._names(name, field)]) < 2
               for name, field in Settings.model_fields.items()))
    with mock.patch.dict(os.environ, environment, clear=True):
        assert settings_module._input(Settings, arguments) == _oracle_input(arguments)


@pytest.mark.parametrize(("environment", "arguments"), [
    ({"MAAS_NAMESPACE": "a", "NAMESPACE": "b"}, {}),  # the first variable of a field wins
    ({"NAMESPACE": "b"}, {}),  # ...named as its first (MAAS_NAMESPACE) in an error
    ({"namespace": "c"}, {}),  # a field's own name, case aside, is read too (populate_by_name)
    ({"maas_store": "kubernetes"}, {}),  # variables are read case aside
    ({"MAAS_NAMESPACE": "a"}, {"namespace": "z"}),  # arguments win over the environment
    ({"MAAS_NAMESPACE": "a"}, {"maas_namespace": "z"}),  # ...under any of their names, case aside
    ({}, {"MAAS_EXPIRED_KEY_RETENTION": "a week", "unrelated": 1}),  # unknown arguments are left to extra=ignore
    ({"MAAS_PROMETHEUS_TIMEOUT": "0", "PROMETHEUS_URL": ""}, {}),  # an empty variable is a value, not unset
])
def test_cases_that_matter_agree(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str],
                                 arguments: dict[str, object]) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert settings_module._input(Settings, arguments) == _oracle_input(arguments)


def test_arguments_win_and_model_validate_reads_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_STORE", "kubernetes")
    monkeypatch.setenv("NAMESPACE", "from-env")
    assert Settings().store == "kubernetes" and Settings().namespace == "from-env"
    assert Settings(namespace="given").namespace == "given"
    # pydantic validates through an overridden __init__, BaseSettings' as ours: the manifests'
    # ConfigMap read by model_validate still meets the environment under it.
    assert Settings.model_validate({"MAAS_NAMESPACE": "given"}).namespace == "given"
    assert Settings.model_validate({}).store == "kubernetes"


def test_errors_name_the_variable_and_never_echo_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAAS_STORE", "s3cr3t-store")
    monkeypatch.setenv("ADMIN_KEY", "REPLACE-ME-please-0123456789")
    monkeypatch.setenv("NAMESPACE", "Not A Label")  # no pattern on namespace: accepted as before
    monkeypatch.setenv("MAAS_KEYS_NAMESPACE", "Not A Label")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    message = str(raised.value)
    assert message.startswith("invalid configuration: ADMIN_KEY: Value error, ADMIN_KEY must be a random secret")
    assert "MAAS_STORE: Input should be 'embedded' or 'kubernetes'" in message
    assert "MAAS_KEYS_NAMESPACE: String should match pattern" in message
    assert "s3cr3t" not in message and "REPLACE-ME-please" not in message

