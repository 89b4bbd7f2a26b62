"""What every dataset plugin declares, and that registering them stays cheap."""

from __future__ import annotations

import subprocess
import sys

from dermbench.api import FIELDS
from dermbench.plugins import registry

MODULES = [
    "ph2",
    "ham10000",
    "pad_ufes20",
    "fitzpatrick17k",
    "scin",
    "isic",
    "generic",
    "ddi",
    "derm7pt",
    "mednode",
    "acne04",
    "skincap",
    "dermamnist",
    "waterloo",
]
EXPECTED = {
    "ph2",
    "ph2-binary",
    "ph2-seg",
    "ham10000",
    "ham10000-seg",
    "pad-ufes-20",
    "fitzpatrick17k-2",
    "fitzpatrick17k-3",
    "fitzpatrick17k-9",
    "scin",
    "isic2017",
    "isic2018",
    "isic2016-seg",
    "isic2017-seg",
    "isic2018-seg",
    "folder",
    "csv",
    "ddi",
    "derm7pt-derm",
    "derm7pt-clinic",
    "mednode",
    "acne04",
    "skincap",
    "dermamnist",
    "waterloo",
    "waterloo-seg",
}


def test_importing_dataset_plugins_loads_no_heavy_library():
    code = (
        "import sys\n"
        + "".join(f"import dermbench_plugins.datasets.{m}\n" for m in MODULES)
        + "heavy = [m for m in ('pandas', 'numpy', 'torch', 'PIL', 'timm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_dataset_declares_license_citation_and_how_to_obtain():
    reg = registry()
    assert EXPECTED <= set(reg.datasets), EXPECTED - set(reg.datasets)
    for name in EXPECTED:
        info = reg.dataset(name).info
        assert set(info.fields) <= set(FIELDS), (name, info.fields)
        assert info.how_to_obtain, name
        if name not in ("folder", "csv"):
            assert info.citation and info.license != "unknown", name
        if "labels" in info.fields and name not in ("folder", "csv"):
            assert len(info.label_names) >= 2, name
    non_commercial = {n for n in EXPECTED if not reg.dataset(n).info.commercial_use}
    assert {"ph2", "ham10000", "fitzpatrick17k-3", "ddi", "dermamnist", "skincap"} <= non_commercial
    assert reg.dataset("pad-ufes-20").info.commercial_use and reg.dataset("scin").info.commercial_use
    official = {n for n in EXPECTED if reg.dataset(n).info.official_split}
    assert official == {
        "isic2017",
        "isic2018",
        "isic2016-seg",
        "isic2017-seg",
        "isic2018-seg",
        "derm7pt-derm",
        "derm7pt-clinic",
        "acne04",
        "dermamnist",
    }
