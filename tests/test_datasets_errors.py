"""Bad input: every error names the file / row / value and the fix; --skip-bad-images skips and counts.

Roots are built in tmp_path from symlinks to the real PH2/HAM10000 files, with one file broken on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dermbench_plugins.datasets import ham10000, pad_ufes20, ph2
from PIL import Image

from dermbench.api import DermbenchError


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("DERMBENCH_CACHE", str(d))
    return d


def _ph2_root(shared: Path, tmp: Path, broken: str | None = None, what: str = "image") -> Path:
    """A PH2 root of symlinks; case ``broken`` gets a real folder with a truncated image or a wrong-size mask."""
    src = shared / "ph2" / "PH2Dataset"
    root = tmp / "ph2"
    imgs = root / "PH2Dataset" / "PH2 Dataset images"
    imgs.mkdir(parents=True)
    (root / "PH2Dataset" / "PH2_dataset.txt").symlink_to(src / "PH2_dataset.txt")
    for case in sorted((src / "PH2 Dataset images").iterdir()):
        if case.name != broken:
            (imgs / case.name).symlink_to(case)
            continue
        d_img = imgs / case.name / f"{case.name}_Dermoscopic_Image"
        d_les = imgs / case.name / f"{case.name}_lesion"
        d_img.mkdir(parents=True)
        d_les.mkdir(parents=True)
        img_src = case / f"{case.name}_Dermoscopic_Image" / f"{case.name}.bmp"
        les_src = case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp"
        if what == "image":
            data = img_src.read_bytes()
            (d_img / img_src.name).write_bytes(data[: len(data) // 3])  # header intact, pixels cut off
            (d_les / les_src.name).symlink_to(les_src)
        else:
            (d_img / img_src.name).symlink_to(img_src)
            Image.new("1", (100, 80)).save(d_les / les_src.name, format="BMP")
    return root


def test_truncated_image_named_lazily_and_skipped_on_request(shared_data, tmp_path):
    root = _ph2_root(shared_data, tmp_path, broken="IMD009", what="image")
    ds = ph2.load_ph2(root)  # lazy: load does not decode
    bad = next(s for s in ds.samples if s.id == "IMD009")
    with pytest.raises(DermbenchError, match=r"IMD009\.bmp.*--skip-bad-images"):
        bad.load_image()
    ds2 = ph2.load_ph2(root, skip_bad_images=True, split_seed=1)
    assert len(ds2) == 44 and ds2.skipped == {"missing_image": 155, "bad_image": 1}
    assert "IMD009" not in {s.id for s in ds2.samples}


def test_mask_size_mismatch_names_both_sizes(shared_data, tmp_path):
    root = _ph2_root(shared_data, tmp_path, broken="IMD010", what="mask")
    with pytest.raises(DermbenchError) as e:
        ph2.load_ph2_seg(root)
    msg = str(e.value)
    real = Image.open(shared_data / "ph2/PH2Dataset/PH2 Dataset images/IMD010/IMD010_Dermoscopic_Image/IMD010.bmp")
    w, h = real.size
    assert "IMD010_lesion.bmp" in msg and "100x80" in msg and f"{w}x{h}" in msg and "--skip-bad-images" in msg
    ds = ph2.load_ph2_seg(root, skip_bad_images=True)
    assert len(ds) == 44 and ds.skipped["mask_size_mismatch"] == 1


def test_ph2_label_outside_declared_set(shared_data, tmp_path):
    root = _ph2_root(shared_data, tmp_path)
    txt = root / "PH2Dataset" / "PH2_dataset.txt"
    lines = txt.read_bytes().decode("latin-1").split("\r\n")
    lines[3] = lines[3].replace("||                  0 ||", "||                  7 ||", 1)
    txt.unlink()
    txt.write_bytes("\r\n".join(lines).encode("latin-1"))
    with pytest.raises(DermbenchError, match=r"line 4 \(IMD016\): Clinical Diagnosis '7' is not one of"):
        ph2.load_ph2(root)


def _ham_root(shared: Path, tmp: Path, edit) -> Path:
    src = shared / "ham10000"
    root = tmp / "ham"
    root.mkdir()
    for p in src.iterdir():
        if p.name != "HAM10000_metadata.csv":
            (root / p.name).symlink_to(p)
    lines = (src / "HAM10000_metadata.csv").read_text().splitlines()
    (root / "HAM10000_metadata.csv").write_text("\n".join(edit(lines)))
    return root


def test_ham_unknown_dx_names_value_and_line(shared_data, tmp_path):
    def edit(lines):
        lines[5] = lines[5].replace(",bkl,", ",melanoma,")
        return lines

    with pytest.raises(
        DermbenchError, match=r"HAM10000_metadata.csv line 6, column 'dx': value 'melanoma' is not one of"
    ):
        ham10000.load_ham10000(_ham_root(shared_data, tmp_path, edit))


def test_ham_missing_column_lists_columns_found(shared_data, tmp_path):
    def edit(lines):
        return [",".join(c for j, c in enumerate(line.split(",")) if j != 5) for line in lines]  # drop 'sex'

    with pytest.raises(DermbenchError) as e:
        ham10000.load_ham10000(_ham_root(shared_data, tmp_path, edit))
    msg = str(e.value)
    assert "['sex']" in msg and "'localization'" in msg and "columns found" in msg


def test_pad_missing_fitspatrick_column(shared_data, tmp_path):
    src = shared_data / "pad-ufes-20"
    root = tmp_path / "pad"
    root.mkdir()
    (root / "images").symlink_to(src / "images")
    text = (src / "metadata.csv").read_text().replace("fitspatrick", "skin_type", 1)
    (root / "metadata.csv").write_text(text)
    with pytest.raises(DermbenchError, match=r"no column\(s\) \['fitspatrick'\]; columns found: .*skin_type"):
        pad_ufes20.load_pad_ufes20(root)


def test_missing_root_and_file_root(tmp_path):
    with pytest.raises(DermbenchError, match="does not exist.*ADDI"):
        ph2.load_ph2(tmp_path / "nope")
    f = tmp_path / "f.txt"
    f.write_text("x")
    with pytest.raises(DermbenchError, match="is a file"):
        ph2.load_ph2(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DermbenchError, match=r"cannot find file PH2_dataset.txt or PH2_dataset.xlsx.*\(empty folder\)"):
        ph2.load_ph2(tmp_path / "empty")


def test_metadata_without_any_image(shared_data, tmp_path):
    root = tmp_path / "pad"
    root.mkdir()
    (root / "metadata.csv").symlink_to(shared_data / "pad-ufes-20" / "metadata.csv")
    with pytest.raises(DermbenchError, match=r"none of the 2298 metadata rows .* has an image .*PAT_46_881_939.png"):
        pad_ufes20.load_pad_ufes20(root)


def test_unknown_dataset_option_is_an_error_listing_the_valid_ones(shared_data):
    with pytest.raises(DermbenchError, match=r"has no option\(s\) \['tabel'\]; it accepts .*table"):
        ph2.load_ph2(shared_data / "ph2", tabel="xlsx")
    assert "table" in ph2.load_ph2.accepted_options
    assert len(ph2.load_ph2(shared_data / "ph2", table="xlsx")) == 45
