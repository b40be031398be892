"""The counts table `coatnet models` prints equals what building each config gives.

The package reads the table; `tools/write_counts.py` (run from a checkout)
writes it.
"""

import json
import os
import sys

import pytest

import keras_coatnet as kc
from keras_coatnet import counts

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tools"))
import write_counts  # noqa: E402

TABLE = counts.load()
# Built in the default suite (a few seconds each); every config under -m slow.
SMALL = ("coatnet-digits", "coatnet_pico_rw_224", "coatnet_nano_rw_224", "coatnet-0")


def test_every_entry_was_measured_on_todays_config():
    assert set(TABLE) == set(kc.CONFIGS)
    stale = [n for n, c in kc.CONFIGS.items() if TABLE[n].config != counts.fingerprint(c)]
    assert not stale, f"configs changed since the table was written: {stale}"


@pytest.mark.parametrize(
    "name",
    [n if n in SMALL else pytest.param(n, marks=pytest.mark.slow) for n in sorted(kc.CONFIGS)],
)
def test_entry_is_what_the_built_model_counts(name):
    assert counts.measure(kc.CONFIGS[name]) == TABLE[name]


def test_a_changed_config_is_caught():
    """Both checks fail for a config that changed after the table was written."""
    wider = kc.CONFIGS["coatnet-digits"].replace(head_hidden_size=64)
    assert counts.fingerprint(wider) != TABLE["coatnet-digits"].config
    measured, listed = counts.measure(wider), TABLE["coatnet-digits"]
    assert (measured.params, measured.macs) != (listed.params, listed.macs)


def test_the_tool_writes_what_the_package_reads(tmp_path):
    assert os.path.samefile(write_counts.PATH, counts.PATH)  # the checkout's own table
    path = str(tmp_path / "model_counts.json")
    write_counts.write(path, names=["coatnet-digits"])
    assert counts.load(path) == {"coatnet-digits": TABLE["coatnet-digits"]}
    assert not hasattr(counts, "write")  # the package writes nothing into itself


def test_the_tool_measures_stale_rows_or_only_stamps_fingerprints(tmp_path):
    path = str(tmp_path / "model_counts.json")
    digits, pico = "coatnet-digits", "coatnet_pico_rw_224"
    fresh = counts.fingerprint(kc.CONFIGS[digits])
    made_up = {
        digits: {"params": 1, "macs": 2, "config": fresh},  # kept: its fingerprint is today's
        pico: {"params": 3, "macs": 4, "config": "stale"},
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(made_up, f)
    write_counts.write(path, names=[digits, pico], measure=False)
    stamped = counts.load(path)
    assert (stamped[pico].params, stamped[pico].macs) == (3, 4)
    assert stamped[pico].config == counts.fingerprint(kc.CONFIGS[pico])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(made_up, f)
    write_counts.write(path, names=[digits, pico], stale=True)
    assert counts.load(path) == {
        digits: counts.Counts(1, 2, fresh),
        pico: TABLE[pico],
    }
