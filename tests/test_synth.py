"""dermsynth: determinism, masks, captions, splits, learnability and the planted skin-tone contrast gap."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle

import numpy as np
import pytest

from dermbench_plugins.datasets.dermsynth import generator as synth
from dermbench.api import DermbenchError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DX = synth.SynthConfig(size=64)
LUMA = np.array([0.299, 0.587, 0.114])


def _weber(img: np.ndarray, mask: np.ndarray) -> float:
    """|L_in / L_out - 1| of mean luminance inside vs outside the mask."""
    lum = img.astype(np.float64) @ LUMA
    return abs(lum[mask].mean() / lum[~mask].mean() - 1.0)


# ------------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_identical_bytes_and_other_seeds_differ():
    a = synth.generate(synth.SynthConfig(size=64, seed=3), 12)
    b = synth.generate(synth.SynthConfig(size=64, seed=3), 12)
    c = synth.generate(synth.SynthConfig(size=64, seed=4), 12)
    for (pa, ia, ma), (pb, ib, mb), (pc, ic, _) in zip(a, b, c):
        assert ia.dtype == np.uint8 and ia.shape == (64, 64, 3)
        assert ia.tobytes() == ib.tobytes() and np.array_equal(ma, mb)
        assert pa.caption == pb.caption and pa.meta == pb.meta
        assert ia.tobytes() != ic.tobytes()
    assert [p.caption for p, _, _ in a] != [p.caption for p, _, _ in c]


# sha256 of the image bytes + packed mask of plan(SynthConfig(kind, size=64), i): pins the output across
# machines and releases (clinics A-D: sharp, blurred, upsampled, dermatoscope field; hair on 6 and 7).
# A deliberate change to the generator must bump GENERATOR_VERSION and update these.
GOLDEN = {
    ("diagnosis", 0): "d38d05a251226310cfcaebf6cd0d7b69",
    ("diagnosis", 6): "48c20cd09a4bb52cefd8d2e865bd7751",
    ("diagnosis", 7): "3cbf895cc2cb4c459f3259d3e8de7fa9",
    ("diagnosis", 11): "ef148a44500d97f757a2be8f4a43e3f5",
    ("severity", 3): "da15a00f32257d3d796c40e4daaa59a6",
}


@pytest.mark.parametrize("kind,index", sorted(GOLDEN))
def test_images_match_pinned_hashes(kind, index):
    pl = synth.plan(synth.SynthConfig(kind=kind, size=64), index)
    data = synth.render_array(pl).tobytes() + np.packbits(synth.lesion_mask(pl)).tobytes()
    digest = hashlib.sha256(data).hexdigest()[:32]
    assert digest == GOLDEN[(kind, index)], f"generator output changed (version {synth.GENERATOR_VERSION})"


def test_any_resolution_draws_the_same_scene():
    pl = synth.plan(DX, 5)
    small, big = synth.lesion_mask(pl, 48), synth.lesion_mask(pl, 192)
    assert small.shape == (48, 48) and big.shape == (192, 192)
    assert abs(small.mean() - big.mean()) < 0.02
    # the big mask block-averaged to 48 px agrees with the small one almost everywhere
    pooled = big.reshape(48, 4, 48, 4).mean(axis=(1, 3)) > 0.5
    assert (pooled == small).mean() > 0.97
    img_small = synth.render_array(pl, 48).astype(float).mean(axis=(0, 1))
    img_big = synth.render_array(pl, 192).astype(float).mean(axis=(0, 1))
    assert np.abs(img_small - img_big).max() < 6  # same colours at any size


# ------------------------------------------------------------------------------------------------ masks


@pytest.mark.parametrize("kind", synth.KINDS)
def test_masks_cover_exactly_the_drawn_lesion(kind):
    cfg = synth.SynthConfig(kind=kind, size=96, tone_contrast_gap=0.0, hair=0.0)
    checked = 0
    for pl, img, mask in synth.generate(cfg, 24):
        assert mask.dtype == bool and mask.shape == (96, 96)
        if kind == "diagnosis":
            assert 0.01 < mask.mean() < 0.6
        if mask.sum() < 20 or pl.fitzpatrick > 4:
            continue
        px = img.reshape(-1, 3).astype(float)
        inside, outside = px[mask.ravel()].mean(0), px[~mask.ravel()].mean(0)
        assert np.abs(inside - outside).sum() > 12, (pl.index, pl.label_name, inside, outside)
        checked += 1
    assert checked >= 8
    # diagnosis masks are one lesion; severity masks are the union of the papules drawn
    if kind == "severity":
        pl = synth.plan(cfg, 3)
        cv_mask = synth.lesion_mask(pl, 400)
        area = sum(np.pi * (r * 200) ** 2 for _, _, r, _ in pl.params["blobs"])  # discs, may overlap
        assert 0.8 * area < cv_mask.sum() <= 1.02 * area


def test_mask_edge_is_the_colour_edge():
    """The mask boundary sits on the drawn edge: just inside looks more like lesion than just outside."""
    from scipy import ndimage

    cfg = synth.SynthConfig(size=128, tone_contrast_gap=0.0, hair=0.0, sites=1)
    checked = 0
    for pl, img, mask in synth.generate(cfg, 18):
        px = img.astype(float)
        rim_in = mask & ~ndimage.binary_erosion(mask, iterations=2)
        rim_out = ndimage.binary_dilation(mask, iterations=2) & ~mask
        far = ~ndimage.binary_dilation(mask, iterations=12)
        skin = px[far].mean(0)
        d_in = np.abs(px[rim_in].mean(0) - skin).sum()
        d_out = np.abs(px[rim_out].mean(0) - skin).sum()
        assert d_in > 1.3 * d_out, (pl.index, pl.label_name, d_in, d_out)
        checked += 1
    assert checked == 18


# ------------------------------------------------------------------------------------------------ captions


KEYWORDS = {
    "nevus": "nevus",
    "melanoma": "melanoma",
    "basal cell carcinoma": "basal cell carcinoma",
    "seborrheic keratosis": "seborrheic keratosis",
    "vascular lesion": "vascular lesion",
    "dermatofibroma": "dermatofibroma",
}
SIGNATURE = {  # a structure every image of the class shows, and its caption says
    "basal cell carcinoma": "arborizing",
    "seborrheic keratosis": "cerebriform",
    "vascular lesion": "lacunae",
    "dermatofibroma": "central white",
}


def test_captions_follow_visible_attributes():
    plans = [synth.plan(DX, i) for i in range(120)]
    by_class: dict[str, set[str]] = {}
    for pl in plans:
        cap = pl.caption.lower()
        a = pl.attributes
        assert KEYWORDS[pl.label_name] in cap
        assert pl.body_site in cap
        assert a["form"] in cap and a["border"] in cap
        for colour in a["colours"]:
            assert colour in cap, (colour, cap)
        if pl.label_name in SIGNATURE:
            assert SIGNATURE[pl.label_name] in cap
        if pl.label_name == "melanoma":
            assert len(a["colours"]) >= 2
        by_class.setdefault(pl.label_name, set()).add(pl.caption.split(" ")[0])
    # wording varies within a class (several templates), not one fixed sentence per label
    assert all(len(v) >= 3 for v in by_class.values())
    # attributes separate the classes on average: melanomas are more asymmetric than nevi
    asym = {c: np.mean([p.params["shape"]["asym_score"] for p in plans if p.label_name == c]) for c in KEYWORDS}
    assert asym["melanoma"] > 1.5 * asym["nevus"]


def test_severity_captions_count_what_is_drawn():
    cfg = synth.SynthConfig(kind="severity", size=64)
    for i in range(16):
        pl = synth.plan(cfg, i)
        kinds = [k for *_, k in pl.params["blobs"]]
        assert pl.attributes["pustules"] == kinds.count("pustule")
        assert pl.attributes["papules"] == kinds.count("papule")
        if kinds.count("papule"):
            assert f"{kinds.count('papule')} inflammatory papule" in pl.caption
        assert synth.SEVERITY_GRADES[pl.label] in pl.caption.lower()
    # grades are ordinal in what is drawn: more lesions on average at higher grades
    counts = [[], [], [], []]
    for i in range(200):
        pl = synth.plan(cfg, i)
        counts[pl.label].append(sum(k != "comedo" for *_, k in pl.params["blobs"]))
    means = [np.mean(c) for c in counts]
    assert means == sorted(means) and means[0] < 2 < means[3]


# ------------------------------------------------------------------------------------------------ metadata, sites


def test_metadata_covers_all_groups():
    plans = [synth.plan(DX, i) for i in range(240)]
    assert {p.fitzpatrick for p in plans} == {1, 2, 3, 4, 5, 6}
    assert {p.sex for p in plans} == {"male", "female"}
    assert {p.site for p in plans} == {s.name for s in synth.SITES}
    assert all(2 <= p.age <= 95 for p in plans)
    assert {p.body_site for p in plans} <= set(synth.BODY_SITES)
    two = synth.SynthConfig(size=64, sites=2)
    assert {synth.plan(two, i).site for i in range(60)} == {"clinic-A", "clinic-B"}


def test_sites_differ_in_colour_cast_and_sharpness():
    """The same scene photographed at two clinics: clinic-C is bluer and blurrier (low-res sensor)."""
    pl = synth.plan(synth.SynthConfig(size=128, hair=0.0), 6)
    a = synth.render_array(dataclasses.replace(pl, site="clinic-A")).astype(float)
    b = synth.render_array(dataclasses.replace(pl, site="clinic-B")).astype(float)
    c = synth.render_array(dataclasses.replace(pl, site="clinic-C")).astype(float)

    def blue_red(x):
        return x[..., 2].mean() / x[..., 0].mean()

    def sharpness(x):
        lum = x @ LUMA
        return np.abs(np.diff(lum, axis=0)).mean() + np.abs(np.diff(lum, axis=1)).mean()

    assert blue_red(c) > blue_red(a) * 1.08 > blue_red(b) * 1.08
    assert sharpness(c) < 0.8 * sharpness(a) and sharpness(b) < 0.8 * sharpness(a)
    assert np.array_equal(synth.lesion_mask(dataclasses.replace(pl, site="clinic-C")), synth.lesion_mask(pl))


# ------------------------------------------------------------------------------------------------ learnability


def _colour_features(cfg: synth.SynthConfig, n: int):
    x, y, fz, con = [], [], [], []
    for pl, img, mask in synth.generate(cfg, n):
        px = img.reshape(-1, 3).astype(float) / 255
        m = mask.ravel()
        inside = px[m] if m.any() else px[:1]
        x.append(np.r_[inside.mean(0), inside.std(0)])
        y.append(pl.label)
        fz.append(pl.fitzpatrick)
        con.append(_weber(img, mask) if m.any() else np.nan)
    return np.array(x), np.array(y), np.array(fz), np.array(con)


def test_colour_statistics_probe_beats_chance_but_does_not_saturate():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, _, _ = _colour_features(synth.SynthConfig(size=48), 180)
    train = (np.arange(len(y)) // 6) % 2 == 0  # every class in both halves
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
    acc = (clf.predict(x[~train]) == y[~train]).mean()
    assert 0.4 < acc < 0.9, acc  # chance is 1/6


def _paired_contrast(gap: float, n: int = 24) -> np.ndarray:
    """Weber contrast of the same scenes rendered on each skin type: (n, 6)."""
    cfg = synth.SynthConfig(size=48, hair=0.0, tone_contrast_gap=gap)
    out = np.zeros((n, 6))
    for i in range(n):
        pl = synth.plan(cfg, i)
        mask = synth.lesion_mask(pl)
        for t in range(1, 7):
            out[i, t - 1] = _weber(synth.render_array(dataclasses.replace(pl, fitzpatrick=t)), mask)
    return out


def test_tone_contrast_gap_is_planted_and_removable():
    gap = _paired_contrast(0.5)
    none = _paired_contrast(0.0)
    light, dark = gap[:, :2].mean(), gap[:, 4:].mean()
    assert dark < 0.75 * light  # planted: lesions fade on types V-VI
    assert gap[:, 5].mean() < gap[:, 4].mean() < gap[:, 3].mean()  # strongest on VI
    assert np.allclose(gap[:, :2], none[:, :2], rtol=0.03)  # types I-II keep their contrast
    ratio = none[:, 4:].mean() / none[:, :2].mean()
    assert 0.93 < ratio < 1.07, ratio  # gap 0: same contrast on every tone
    # the same holds for images drawn with their own skin types (not paired)
    _, _, fz, con = _colour_features(synth.SynthConfig(size=48, hair=0.0), 96)
    assert np.nanmean(con[np.isin(fz, (5, 6))]) < 0.8 * np.nanmean(con[np.isin(fz, (1, 2))])


def test_exposure_compensation_sets_skin_brightness_only():
    """Auto-exposure scales the whole image: skin brightness moves, lesion contrast does not."""
    pl = synth.plan(synth.SynthConfig(size=48, hair=0.0, tone_contrast_gap=0.0), 3)
    mask = synth.lesion_mask(pl)
    skin, con = {}, {}
    for comp in (0.0, 1.0):
        cfg = dataclasses.replace(pl.config, exposure_compensation=comp)
        for t in (3, 6):
            img = synth.render_array(dataclasses.replace(pl, config=cfg, fitzpatrick=t))
            skin[comp, t] = (img.astype(float) @ LUMA)[~mask].mean()
            con[comp, t] = _weber(img, mask)
    assert skin[0.0, 6] < 0.45 * skin[0.0, 3]  # no compensation: type VI photographed dark
    assert 0.85 < skin[1.0, 6] / skin[1.0, 3] < 1.15  # full compensation: equally bright
    assert skin[1.0, 3] == pytest.approx(skin[0.0, 3], rel=0.02)  # type III is the reference
    for comp in (0.0, 1.0):
        assert con[comp, 6] == pytest.approx(con[comp, 3], rel=0.12)


# ------------------------------------------------------------------------------------------------ plugin


@pytest.fixture(scope="module")
def registry():
    from dermbench import plugins

    old = os.environ.get(plugins.ALLOW_ENV)
    os.environ[plugins.ALLOW_ENV] = "datasets-dermsynth"
    plugins.reset_all()
    try:
        yield plugins.registry()
    finally:
        if old is None:
            os.environ.pop(plugins.ALLOW_ENV, None)
        else:
            os.environ[plugins.ALLOW_ENV] = old
        plugins.reset_all()


def test_plugin_registers_both_datasets(registry):
    assert not registry.errors
    for name, classes in (("dermsynth", 6), ("dermsynth-severity", 4)):
        info = registry.dataset(name).info
        assert len(info.label_names) == classes
        assert {"labels", "masks", "captions", "fitzpatrick", "sex", "age", "site"} <= info.fields
        assert info.needs_root is False and info.official_split is True
        assert info.license == "CC0-1.0 (generated)" and info.commercial_use is True
    from dermbench_plugins.datasets.dermsynth import generator as s

    assert registry.dataset("dermsynth").info.label_names == s.DIAGNOSES
    assert registry.dataset("dermsynth-severity").info.label_names == s.SEVERITY_GRADES


def test_loader_returns_balanced_deterministic_splits(registry):
    load = registry.dataset("dermsynth").obj
    ds = load(n=66, size=48)
    tr, te = ds.splits["train"], ds.splits["test"]
    assert set(ds.splits) == {"train", "test"}
    assert len(tr) == len(te) == 33 and not set(tr) & set(te) and sorted(tr + te) == list(range(66))
    for c in range(6):  # 11 per class: 6/5 or 5/6
        n_tr = sum(ds.samples[i].label == c for i in tr)
        assert n_tr in (5, 6)
    again = load(n=66, size=48)
    assert again.splits == ds.splits and again.split("test").hash == ds.split("test").hash
    other = load(n=66, size=48, split_seed=1)
    assert other.splits != ds.splits
    s = ds.samples[0]
    img, mask = s.load_image(), s.load_mask()
    # lazily drawn, picklable (DataLoader workers), and the same image every time
    clone = pickle.loads(pickle.dumps(s.image))
    assert clone().tobytes() == img.tobytes() == s.load_image().tobytes()
    assert img.mode == "RGB" and img.size == (48, 48) and mask.shape == (48, 48) and mask.dtype == bool
    assert set(s.meta) == {"fitzpatrick", "sex", "age", "site", "body_site"}
    assert s.caption and s.label == 0 and ds.label_names[0] == "nevus"


def test_fingerprint_tracks_generator_parameters(registry):
    load = registry.dataset("dermsynth").obj
    base = load(n=24, size=48)
    changes = ({"tone_contrast_gap": 0.0}, {"seed": 1}, {"size": 64}, {"hair": 0.0}, {"sites": 3},
               {"exposure_compensation": 1.0})
    for kw in changes:
        other = load(n=24, **{"size": 48, **kw})
        assert other.content_fingerprint != base.content_fingerprint, kw
        assert other.split("test").hash != base.split("test").hash, kw
    assert load(n=24, size=48).content_fingerprint == base.content_fingerprint
    sev = registry.dataset("dermsynth-severity").obj(n=16, size=48)
    assert sorted({s.label for s in sev.samples}) == [0, 1, 2, 3]
    assert sev.content_fingerprint != base.content_fingerprint


def test_bad_options_name_the_fix(registry):
    load = registry.dataset("dermsynth").obj
    with pytest.raises(DermbenchError, match="valid options: n, size, seed, split_seed, tone_contrast_gap"):
        load(n=24, contrast=0.3)
    with pytest.raises(DermbenchError, match="tone_contrast_gap"):
        load(n=24, tone_contrast_gap=1.5)
    with pytest.raises(DermbenchError, match="exposure_compensation"):
        load(n=24, exposure_compensation=-0.1)
    with pytest.raises(DermbenchError, match="n >= 12"):
        load(n=5)
    with pytest.raises(DermbenchError, match="size"):
        load(n=24, size=4)
    with pytest.raises(DermbenchError, match="not a valid int"):
        load(n="many")
    ds = load(n="24", size="48", tone_contrast_gap="0.2")  # command-line strings are converted
    assert len(ds) == 24 and ds.samples[0].load_image().size == (48, 48)


def test_dataset_info_class_names_match_the_generator():
    """The entry module repeats the class names to stay import-light (no numpy/PIL); they must not drift."""
    from dermbench_plugins.datasets import dermsynth
    from dermbench_plugins.datasets.dermsynth import generator

    infos = {i.name: i for i in (v for v in vars(dermsynth).values() if type(v).__name__ == "DatasetInfo")}
    assert infos["dermsynth"].label_names == generator.DIAGNOSES
    assert infos["dermsynth-severity"].label_names == generator.SEVERITY_GRADES
