from deploy.stackctl import docs


def test_settings_table_matches_the_code() -> None:
    assert docs.SETTINGS_DOC.read_text() == docs.render(), (
        "docs/SETTINGS.md is stale: run `make settings-table`"
    )


def test_every_knob_has_unit_layer_and_effect() -> None:
    from service.settings import Settings

    for name, info in Settings.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and extra.get("unit") and extra.get("layer"), name
        assert info.description and len(info.description) > 20, name


def test_every_tool_input_has_unit_tools_and_effect() -> None:
    from service.settings import ToolInputs

    for name, info in ToolInputs.model_fields.items():
        extra = info.json_schema_extra
        assert isinstance(extra, dict) and extra.get("unit") and extra.get("defaults"), name
        assert info.description and len(info.description) > 20, name
