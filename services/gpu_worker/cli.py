"""``dtlr weights``: ImageNet weights on a workstation without internet access."""

from __future__ import annotations

from pathlib import Path

import click

from dtlr.services.gpu_worker import weights
from dtlr.shared.cli import Refused, console, say


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def weights_group() -> None:
    """Install and inspect the ResNet50 ImageNet weights (IMAGENET1K_V2) for offline use.

    \b
    On a machine with internet access:  curl -O https://download.pytorch.org/models/resnet50-11ad3fa6.pth
    Carry the file over, then:          dtlr weights install resnet50-11ad3fa6.pth
    """


@weights_group.command("install")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def install(file: Path) -> None:
    """Check FILE against torchvision's published checksum and put it in torchvision's cache."""
    try:
        target = weights.install(file)
    except weights.WeightsFileError as exc:
        raise Refused(str(exc)) from exc
    say("installed", "green", f"{file} -> {target} (checksum matches {weights.IMAGENET_URL}); "
                              "`--weights imagenet` (the default) now works offline")


@weights_group.command("status")
def status() -> None:
    """Say whether torchvision's cache holds the ImageNet weights, and whether they check out."""
    st = weights.status()
    name, prefix = weights.published_name()
    if not st.present:
        console.print(f"ImageNet weights: not in torchvision's cache ({st.path}). Offline: "
                      f"copy {name} from {weights.IMAGENET_URL} and run `dtlr weights install "
                      f"{name}`; or use --weights PATH / --weights random.")
        raise SystemExit(1)
    verdict = "checksum OK" if st.checksum_ok else f"checksum WRONG (expected {prefix}...)"
    console.print(f"ImageNet weights: {st.path} ({st.size / 2**20:.1f} MiB), {verdict}")
    if not st.checksum_ok:
        raise SystemExit(1)
