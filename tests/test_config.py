"""The config schema: defaults from fields, checks that name the field, unknown fields named."""
import pytest

from hardness.config import ConfigError, Field, check_fields, merge_config, schema_defaults

SCHEMA = (Field("runs", 1, "integer", low=1),
          Field("training.lr", 0.01, "number", low=0, strict=True),
          Field("training.optimizer", "sgd", "choice", choices=("sgd", "adam")),
          Field("training.momentum", None, "number", low=0, high=1, optional=True),
          Field("model.bias", True, "bool"),
          Field("model.layers", [4, 4]))


def test_defaults_are_nested_by_path():
    assert schema_defaults(SCHEMA) == {"runs": 1, "training": {"lr": 0.01, "optimizer": "sgd", "momentum": None},
                                       "model": {"bias": True, "layers": [4, 4]}}
    first, second = schema_defaults(SCHEMA), schema_defaults(SCHEMA)
    first["model"]["layers"].append(8)
    assert second["model"]["layers"] == [4, 4]              # each call its own copy of a list default


@pytest.mark.parametrize("given, message", [
    ({"runs": 0}, "config field runs: must be >= 1, got 0"),
    ({"runs": 2.5}, "config field runs: must be an integer, got 2.5"),
    ({"runs": True}, "config field runs: must be an integer, got True"),
    ({"training": {"lr": 0}}, "config field training.lr: must be > 0, got 0"),
    ({"training": {"optimizer": "rmsprop"}}, "config field training.optimizer: must be one of sgd, adam, got 'rmsprop'"),
    ({"training": {"momentum": 1.5}}, "config field training.momentum: must be <= 1, got 1.5"),
    ({"model": {"bias": "yes"}}, "config field model.bias: must be true or false, got 'yes'"),
])
def test_a_bad_value_names_its_field(given, message):
    config = merge_config(schema_defaults(SCHEMA), given)
    with pytest.raises(ConfigError) as error:
        check_fields(config, SCHEMA)
    assert str(error.value) == message


def test_good_values_and_an_optional_none_pass():
    config = merge_config(schema_defaults(SCHEMA), {"runs": 3, "training": {"momentum": 0.9, "optimizer": "adam"}})
    check_fields(config, SCHEMA)
    check_fields(schema_defaults(SCHEMA), SCHEMA)


def test_a_misspelt_field_is_named():
    with pytest.raises(ConfigError) as error:
        merge_config(schema_defaults(SCHEMA), {"training": {"l_r": 0.1}})
    assert str(error.value) == "config field training.l_r: unknown field; known: lr, optimizer, momentum"
