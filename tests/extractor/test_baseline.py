"""dtlr-extract reproduces pyradiomics' own baseline feature values on its test cases."""

from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from dtlr.services.extractor.cli import extract

CLASSES = ("firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm", "shape")


def baseline(data_dir: Path, column: str) -> tuple[dict, dict[str, float]]:
    """Settings and expected values of one baseline column, over all feature classes."""
    settings: dict = {}
    expected: dict[str, float] = {}
    for cls in CLASSES:
        df = pd.read_csv(data_dir / "pyradiomics" / "baseline" / f"baseline_{cls}.csv",
                         index_col=0)
        cfg = ast.literal_eval(df.loc["diagnostics_Configuration_Settings", column])
        cfg = {k: v for k, v in cfg.items() if v is not None and k != "additionalInfo"}
        assert not settings or cfg == settings, f"{cls} baseline uses other settings"
        settings = cfg
        expected.update({k: float(v) for k, v in df[column].items()
                         if not k.startswith("diagnostics_")})
    return settings, expected


@pytest.mark.parametrize("case,column", [("brain1", "brain1"), ("brain2", "brain2"),
                                         ("brain1", "brain1_resampling")])
def test_reproduces_pyradiomics_baseline(data_dir: Path, tmp_path: Path, case: str,
                                         column: str) -> None:
    settings, expected = baseline(data_dir, column)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"imageType": {"Original": {}},
                                      "featureClass": {c: None for c in CLASSES},
                                      "setting": settings}), encoding="utf-8")
    out = tmp_path / "features.csv"
    result = CliRunner().invoke(extract, [
        "--image", str(data_dir / "pyradiomics" / f"{case}_image.nrrd"),
        "--mask", str(data_dir / "pyradiomics" / f"{case}_label.nrrd"),
        "--no-n4", "--params", str(params), "--out", str(out)])
    assert result.exit_code == 0, result.output
    row = pd.read_csv(out).iloc[0]
    got = {k: float(v) for k, v in row.items() if k not in ("Image", "Mask")}
    assert len(got) == 107  # 14 shape + 93 grey-level features of the original image
    missing = set(got) - set(expected)
    assert not missing, f"features without a baseline: {sorted(missing)}"
    # pyradiomics' own test criterion (tests/testUtils.py): less than 3 % relative difference.
    for name, value in got.items():
        ref = expected[name]
        diff = 0.0 if ref == value else abs(1 - value / ref) if ref else 1.0
        assert diff < 0.03, f"{name}: {value} vs baseline {ref}"


def test_paper_parameter_file_gives_1130_features(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "f.csv"
    result = CliRunner().invoke(extract, [
        "--image", str(data_dir / "pyradiomics" / "brain2_image.nrrd"),
        "--mask", str(data_dir / "pyradiomics" / "brain2_label.nrrd"),
        "--no-n4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cols = [c for c in pd.read_csv(out).columns if c not in ("Image", "Mask")]
    assert len(cols) == 1130
    prefixes = pd.Series([c.split("_")[0] for c in cols]).value_counts().to_dict()
    assert prefixes == {"original": 107, "log-sigma-1-0-mm-3D": 93, "log-sigma-2-0-mm-3D": 93,
                        "log-sigma-3-0-mm-3D": 93} | {
        f"wavelet-{d}": 93 for d in ("LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH", "LLL")}
    assert "original_glcm_Autocorrelation" in cols


def test_missing_label_is_a_clear_error(data_dir: Path) -> None:
    result = CliRunner().invoke(extract, [
        "--image", str(data_dir / "pyradiomics" / "brain2_image.nrrd"),
        "--mask", str(data_dir / "pyradiomics" / "brain2_label.nrrd"),
        "--no-n4", "--label", "7"])
    assert result.exit_code != 0
    assert "no voxel with label 7" in result.output
    assert "labels found: 0, 1" in result.output
