"""N4 bias-field correction on a shrunken copy, applied at full resolution."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk

from dtlr.shared.config import PreprocessSettings
from dtlr.shared.stage import InputError


def shrink_factors(spacing: tuple[float, ...], factor: int) -> list[int]:
    """Per-axis shrink: ``factor`` on the finest axis, less on coarser ones (5 mm slices stay)."""
    finest = min(spacing)
    return [max(1, round(factor * finest / s)) for s in spacing]


def head_mask(image: sitk.Image) -> sitk.Image:
    """Foreground (head) by Otsu's threshold: N4 fits the bias field inside it only."""
    return sitk.OtsuThreshold(image, 0, 1, 200)


@contextmanager
def one_thread() -> Iterator[None]:
    """SimpleITK filters created inside run on one thread.

    N4's B-spline fit and the evaluation of its field on the full grid split their sums by
    thread, so their result depends on the thread count (corrected intensities differed by
    up to 5e-4 between 1 and 2 threads on the demo, enough to move percentile features): on
    one thread, features do not depend on how many cores, workers or --jobs a run has.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def n4_correct(image: sitk.Image, settings: PreprocessSettings) -> tuple[sitk.Image, sitk.Image]:
    """Return (corrected image, log bias field) from N4ITK fitted on a shrunken copy.

    Fitting on a shrunken image is what makes N4 affordable (full resolution takes minutes);
    the smooth field is then evaluated on the full-resolution grid and divided out, on one
    thread (:func:`one_thread`) so the result is the same on every machine.
    """
    with one_thread():
        return _n4(image, settings)


def _n4(image: sitk.Image, settings: PreprocessSettings) -> tuple[sitk.Image, sitk.Image]:
    img = sitk.Cast(image, sitk.sitkFloat32)
    mask = head_mask(img)
    values = sitk.GetArrayViewFromImage(img)[sitk.GetArrayViewFromImage(mask) > 0]
    if values.size == 0 or values.min() <= 0:
        raise InputError("N4 needs positive intensities inside the head, but this image has "
                         "zero or negative values there; switch N4 off (--no-n4, or "
                         "preprocess.n4: false) for images that are already normalised")
    factors = shrink_factors(img.GetSpacing(), settings.n4_shrink_factor)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in settings.n4_iterations])
    n4.SetConvergenceThreshold(settings.n4_convergence_threshold)
    n4.SetSplineOrder(settings.n4_spline_order)
    n4.SetNumberOfControlPoints([settings.n4_control_points] * img.GetDimension())
    n4.Execute(sitk.Shrink(img, factors), sitk.Shrink(mask, factors))
    log_bias = n4.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_bias)
    if not np.isfinite(sitk.GetArrayViewFromImage(corrected)).all():
        raise InputError("N4 produced non-finite values; check the image for corrupt voxels or "
                         "switch N4 off")
    return corrected, log_bias
