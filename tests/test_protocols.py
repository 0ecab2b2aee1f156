"""The presets against the protocol card (docs/protocols.md): a drifting default fails here.

The card has one table per preset; a row whose setting is in CHECKED holds a JSON value in backticks, which
must equal what the preset resolves to (config keys) or what the dataset loader uses (crop, normalisation).
"""

import json
import re
from pathlib import Path

import pytest

from catchup_mix.config import PRESETS, make_config
from catchup_mix.data.files import TRANSFORMS

CARD = Path(__file__).resolve().parents[1] / "docs" / "protocols.md"
CONFIG_KEYS = ("dataset", "epochs", "batch_size", "lr", "schedule", "milestones", "gamma", "momentum", "nesterov",
               "weight_decay", "loss", "crop_padding")
TRANSFORM_KEYS = ("crop_size", "mean", "std")
CHECKED = CONFIG_KEYS + TRANSFORM_KEYS
REFERENCE_PRESETS = [name for name in PRESETS if name != "smoke"]
FINE_GRAINED = ("cub200", "stanford_cars", "fgvc_aircraft")


def card_values(text: str) -> dict[str, dict[str, object]]:
    """{preset: {setting: value}} from the card's `## `preset`` sections and their table rows."""
    values, preset = {}, None
    for line in text.splitlines():
        heading = re.match(r"^## `([a-z0-9_]+)`", line)
        if heading:
            preset = heading[1]
            values[preset] = {}
            continue
        row = re.match(r"^\| ([a-z_ -]+?) \| `([^`]+)` \|", line)
        if preset and row and row[1] in CHECKED:
            values[preset][row[1]] = json.loads(row[2])
    return values


def transform_of(dataset: str):
    return TRANSFORMS["fine_grained" if dataset in FINE_GRAINED else dataset]


def preset_values(name: str) -> dict[str, object]:
    config = make_config(PRESETS[name])
    transform = transform_of(config.dataset)
    values = {key: getattr(config, key) for key in CONFIG_KEYS}
    if config.crop_padding is None:  # the dataset's own padding
        values["crop_padding"] = transform.train_padding
    values.update(crop_size=transform.crop_size, mean=list(transform.mean), std=list(transform.std))
    return values


def test_the_card_covers_every_reference_preset_and_every_checked_setting():
    card = card_values(CARD.read_text())
    assert sorted(card) == sorted(REFERENCE_PRESETS)
    for name, settings in card.items():
        assert sorted(settings) == sorted(CHECKED), f"{name}: rows missing for {set(CHECKED) - set(settings)}"


@pytest.mark.parametrize("name", REFERENCE_PRESETS)
def test_preset_matches_the_card(name):
    card = card_values(CARD.read_text())[name]
    ours = preset_values(name)
    for setting in CHECKED:
        if setting in ("mean", "std"):
            assert ours[setting] == pytest.approx(card[setting], abs=5e-6), setting
        else:
            assert ours[setting] == card[setting], f"{name}.{setting}: preset {ours[setting]!r}, card {card[setting]!r}"


def test_a_drifted_preset_is_caught(monkeypatch):
    monkeypatch.setitem(PRESETS, "cifar100_300ep", {**PRESETS["cifar100_300ep"], "nesterov": False})
    with pytest.raises(AssertionError, match="nesterov"):
        test_preset_matches_the_card("cifar100_300ep")
    monkeypatch.setitem(TRANSFORMS["cifar100"].__dict__, "train_padding", 4)  # frozen dataclass: patch its dict
    monkeypatch.setitem(PRESETS, "cifar100_300ep", {**PRESETS["cifar100_300ep"], "nesterov": True, "crop_padding": None})
    with pytest.raises(AssertionError, match="crop_padding"):
        test_preset_matches_the_card("cifar100_300ep")
