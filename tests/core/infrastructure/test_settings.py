from pathlib import Path

import pytest
from pydantic import ValidationError

from espalier.core.infrastructure.settings import Settings


def test_environment_variables_are_read(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPALIER_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("ESPALIER_PORT", "9001")
    monkeypatch.setenv("ESPALIER_PLUGINS", "espalier-hello, other_dist")
    settings = Settings()
    assert settings.home == tmp_path / "h"
    assert settings.port == 9001
    assert settings.plugins == ["espalier-hello", "other_dist"]
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'h' / 'espalier.db'}"


def test_empty_allow_list_means_no_plugins(monkeypatch):
    monkeypatch.setenv("ESPALIER_PLUGINS", "")
    assert Settings().plugins == []


def test_unset_allow_list_means_all():
    assert Settings().plugins is None


def test_toml_file_is_read_under_the_environment(monkeypatch, tmp_path):
    config = tmp_path / "espalier.toml"
    config.write_text('port = 7000\nrate_limit_per_minute = 5\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("ESPALIER_CONFIG_FILE", str(config))
    monkeypatch.setenv("ESPALIER_PORT", "7001")
    settings = Settings()
    assert settings.port == 7001  # the environment wins
    assert settings.rate_limit_per_minute == 5
    assert settings.log_level == "DEBUG"


def test_missing_toml_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("ESPALIER_CONFIG_FILE", str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        Settings()


def test_bad_values_are_rejected(monkeypatch):
    monkeypatch.setenv("ESPALIER_PORT", "not-a-port")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_settings_are_not_read_at_import_time():
    import espalier.api.app as app_module
    import espalier.core.platform as platform_module

    for module in (app_module, platform_module):
        assert not any(isinstance(value, Settings) for value in vars(module).values())
    assert isinstance(Path(Settings().home), Path)


@pytest.mark.parametrize(
    "value, expected",
    [("calculator", ["calculator"]), ("calculator, pal", ["calculator", "pal"]), ('["calculator"]', ["calculator"])],
)
def test_plugin_lists_take_the_documented_comma_form_and_json(monkeypatch, value, expected):
    monkeypatch.setenv("ESPALIER_DISABLE_PLUGINS", value)
    monkeypatch.setenv("ESPALIER_PLUGINS", value)
    settings = Settings()
    assert settings.disable_plugins == expected and settings.plugins == expected
    monkeypatch.setenv("ESPALIER_PLUGINS", "")
    assert Settings().plugins == []  # set and empty: load none


def test_each_plugin_reads_its_own_section(monkeypatch, tmp_path):
    from pydantic import BaseModel

    from espalier.core.infrastructure.errors import InvalidInput

    class HelloSettings(BaseModel):
        greeting: str = "Hello"
        repeat: int = 1

    config = tmp_path / "espalier.toml"
    config.write_text(
        '[plugin_settings.hello]\ngreeting = "Bonjour"\nrepeat = 2\n\n[plugin_settings.broken]\nrepeat = "x"\n'
    )
    monkeypatch.setenv("ESPALIER_CONFIG_FILE", str(config))
    settings = Settings()
    assert settings.for_plugin("hello", HelloSettings) == HelloSettings(greeting="Bonjour", repeat=2)
    assert settings.for_plugin("hello") == {"greeting": "Bonjour", "repeat": 2}
    assert settings.for_plugin("absent", HelloSettings) == HelloSettings()
    with pytest.raises(InvalidInput, match=r"plugin_settings\.broken.*repeat"):
        settings.for_plugin("broken", HelloSettings)
    monkeypatch.setenv("ESPALIER_PLUGIN_SETTINGS", '{"hello": {"greeting": "Hallo"}}')
    assert Settings().for_plugin("hello", HelloSettings).greeting == "Hallo"  # the environment wins
