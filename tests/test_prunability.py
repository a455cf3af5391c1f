"""benchmarks/prunability.py: three small keras.applications models through the table's path."""

import importlib.util
import sys

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("prunability", ROOT / "benchmarks/prunability.py")
prunability = sys.modules["prunability"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prunability)

SMALL = {
    "MobileNet": {"alpha": 0.25},  # depthwise chain
    "MobileNetV2": {"alpha": 0.35},  # residual adds across depthwise blocks
    "VGG16": {},  # plain chain, Flatten into Dense
}


@pytest.mark.slow
@pytest.mark.parametrize("name", SMALL)
def test_small_application_prunes_checks_and_reloads(name):
    row = prunability.measure(name, 32, 0.3, **SMALL[name])
    assert row.error == "", row.error
    assert row.passed, row
    assert row.equivalence <= 1e-5
    assert 0 < row.pruned_groups < row.prunable <= row.groups, row
    assert row.params_after < 0.8 * row.params, row
    assert row.macs_after < 0.8 * row.macs, row
    assert row.coverage == 1.0, row
    text = prunability.table([row])
    assert f"| {name} | 32 |" in text and "1 of 1 models pass" in text


@pytest.mark.slow
def test_a_keras3_application_is_pruned_natively_and_reloads_with_plain_keras():
    row = prunability.measure("MobileNetV2", 32, 0.3, keras_version=3, alpha=0.35)
    assert row.error == "", row.error
    assert row.passed and row.engine == "native" and row.keras == 3, row
    assert 0 < row.pruned_groups < row.prunable <= row.groups, row
    assert row.params_after < 0.8 * row.params, row
    assert "| MobileNetV2 | 25 / 26 | 0.5" in prunability.side_by_side([row])


def test_a_refused_size_falls_back_and_says_so():
    model, size, note = prunability.build("MobileNet", 16, alpha=0.25)  # needs 32 or more
    assert (size, model.input_shape) == (96, (None, 96, 96, 3))
    assert note.startswith("built at 96x96: 16 refused (")


def test_a_refusal_is_a_row_naming_the_step_and_layer(monkeypatch):
    from avlsi.surgery import SurgeryError

    def refuse(model, psize):
        raise SurgeryError("cannot remove channels of 'conv_pw_1' (SomeLayer)")

    monkeypatch.setattr(prunability, "prune_l1", refuse)
    row = prunability.measure("MobileNet", 32, 0.3, alpha=0.25)
    assert not row.passed
    assert row.error == "prune: cannot remove channels of 'conv_pw_1' (SomeLayer)"
    assert row.groups > 0 and row.macs > 0  # what was measured before the failure stays
    assert "- MobileNet failed at prune: cannot remove" in prunability.table([row])


def test_unknown_model_is_one_line(capsys):
    assert prunability.main(["--models", "NoSuchNet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["avlsi: error: not in keras.applications: NoSuchNet"]
