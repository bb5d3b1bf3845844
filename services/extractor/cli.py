"""``dtlr extract``: one case, the way the pyradiomics command line does it (plus N4)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pandas as pd

from dtlr.services.extractor.single import extract_one
from dtlr.shared.cli import Refused
from dtlr.shared.config import MAX_VOXELS
from dtlr.shared.stage import InputError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--image", required=True, type=click.Path(exists=True, path_type=Path),
              help="Image file or DICOM series folder.")
@click.option("--mask", required=True, type=click.Path(exists=True, path_type=Path),
              help="Label map (same formats), DICOM SEG, DICOM RTSTRUCT or 3D Slicer .seg.nrrd.")
@click.option("--segment", default=None,
              help="Name of the segment or ROI in a DICOM SEG, RTSTRUCT or .seg.nrrd mask "
                   "(needed when it holds several).")
@click.option("--label", type=click.IntRange(min=1), default=None,
              help="Label value of the ROI (overrides the parameter file's 'label').")
@click.option("--params", default="paper", show_default=True,
              help="pyradiomics parameter file (YAML), or a shipped name.")
@click.option("--n4/--no-n4", default=True, show_default=True,
              help="N4 bias-field correction before extraction.")
@click.option("--mask-geometry", type=click.Choice(["strict", "resample"]), default="strict",
              show_default=True,
              help="A mask off the image's grid (and not a voxel-aligned crop of it): refuse it, "
                   "or resample it onto the image grid (nearest neighbour).")
@click.option("--max-voxels", type=click.IntRange(min=1), default=MAX_VOXELS, show_default=True,
              help="Refuse files whose header declares more voxels (checked before reading).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write .csv or .parquet (default: CSV on standard output).")
def extract(image: Path, mask: Path, segment: str | None, label: int | None, params: str,
            n4: bool, mask_geometry: str, max_voxels: int, out: Path | None) -> None:
    """Extract radiomics features for one IMAGE and MASK.

    The mask is a label map, or one segment (--segment NAME) of a DICOM SEG or RTSTRUCT drawn
    on the IMAGE series folder, or of a 3D Slicer .seg.nrrd. Resampling, filters and feature
    classes come from the parameter file, as in pyradiomics; the output has one row and one
    column per feature, named as pyradiomics names them (e.g. original_glcm_Autocorrelation).
    Damaged or oversized files, NaN/Inf or constant images, and a mask off the image's grid
    (unless --mask-geometry resample; a voxel-aligned crop is placed into the grid) are
    refused, as in `dtlr submit`.
    """
    notes: list[str] = []
    try:
        values = extract_one(image, mask, params, n4, label, mask_geometry, max_voxels, notes,
                             segment=segment)
    except InputError as exc:
        raise Refused(str(exc)) from exc
    for note in notes:
        click.echo(note, err=True)
    row = pd.DataFrame([{"Image": str(image), "Mask": str(mask), **values}])
    if out is None:
        row.to_csv(sys.stdout, index=False)
    elif out.suffix.lower() == ".parquet":
        row.to_parquet(out, index=False)
    else:
        row.to_csv(out, index=False)
    if out is not None:
        click.echo(f"{len(values)} features -> {out}", err=True)


