"""Which pbs_mom config files plain ``doctor`` reads: each batch system's that the node has."""

from __future__ import annotations

from pathlib import Path

import pytest

from mom_checkpoint.commands import doctor


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ((), ["torque"]),  # neither: TORQUE's, whose check then says it is missing
        (("torque",), ["torque"]),
        (("openpbs",), ["openpbs"]),
        (("torque", "openpbs"), ["torque", "openpbs"]),  # both: both, not TORQUE's alone
    ],
)
def test_plain_doctor_reads_every_pbs_moms_config_the_node_has(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, present: tuple[str, ...], expected: list[str]
) -> None:
    paths = {"torque": tmp_path / "torque-config", "openpbs": tmp_path / "pbs-config"}
    monkeypatch.setattr(doctor, "DEFAULT_MOM_CONFIG", str(paths["torque"]))
    monkeypatch.setattr(doctor, "OPENPBS_MOM_CONFIG", str(paths["openpbs"]))
    for name in present:
        paths[name].write_text("")
    assert doctor.default_mom_configs() == [str(paths[name]) for name in expected]
