"""The shared diagnosis vocabulary: one set of terms every dataset's labels map onto.

Why: each dataset plugin keeps its own class names (``mel``, ``MEL``, ``melanoma``, ``malignant melanoma``), so
nothing can be compared across datasets. Every dataset plugin ships its mapping as data, a JSON file in a
``vocab/`` folder next to its module (the first-party ones: ``plugins/datasets/vocab/*.json``)::

    {"ham10000": {"granularity": "diagnosis",
                  "classes": {"mel": "melanoma", "nv": "nevus",
                              "akiec": {"term": "ak", "axis": "malignant", "note": "includes Bowen's"}, ...}}}

A class maps to a vocabulary term (a string), to ``{"term": ..., "axis": ..., "note": ...}`` (``term`` may be
null: the class has no diagnosis-level equivalent but still sits on the malignancy axis), or to ``null``: the
class is explicitly excluded (dropped by every view). A class missing from the mapping is an error, never a
silent drop. ``granularity`` is ``diagnosis`` (labels are diagnoses), ``coarse`` (labels are groups such as
benign/malignant: the dataset says so, and only the ``malignant`` view applies) or ``none`` (labels are not
diagnoses: severity grades, user-defined classes, no labels).

The malignancy axis of a term (``TERMS``) can be overridden per class (``axis``): HAM10000's ``akiec`` holds
intraepithelial carcinoma (Bowen's) besides actinic keratoses and ISIC counts it as malignant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dermbench.api import DermbenchError

#: the dermbench diagnosis vocabulary, in display order: term -> (description, default malignancy axis)
TERMS: dict[str, tuple[str, str]] = {
    "melanoma": ("melanoma (invasive or in situ)", "malignant"),
    "nevus": ("melanocytic nevus (common, atypical/dysplastic, congenital, blue, Spitz)", "benign"),
    "bcc": ("basal cell carcinoma", "malignant"),
    "scc": ("squamous cell carcinoma, including Bowen's disease (SCC in situ) and keratoacanthoma", "malignant"),
    "ak": ("actinic keratosis (premalignant)", "uncertain"),
    "sk": ("seborrheic keratosis / benign keratosis-like lesions (solar lentigo, lichen-planus-like keratosis)",
           "benign"),
    "df": ("dermatofibroma", "benign"),
    "vascular": ("vascular lesion (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)", "benign"),
    "other": ("any other skin condition (inflammatory, infectious, other neoplasms)", "uncertain"),
}
#: values of the malignancy axis
AXIS = ("malignant", "benign", "uncertain")
GRANULARITIES = ("diagnosis", "coarse", "none")
#: derived views: ``<dataset>:<view>``
VIEWS = {
    "mel-vs-nev": "melanoma (1) vs nevus (0); every other class dropped",
    "malignant": "malignant (1) vs benign (0) on the malignancy axis; uncertain and excluded classes dropped",
    "vocab": "labels relabelled to the shared vocabulary terms present (in vocabulary order); excluded dropped",
}
VOCAB_DIR = "vocab"


@dataclass(frozen=True)
class ClassMap:
    """Where one dataset class lands: a vocabulary term (or None) and a malignancy axis value (or None)."""

    label: str
    term: str | None
    axis: str | None
    note: str = ""

    @property
    def excluded(self) -> bool:
        return self.term is None and self.axis is None


@dataclass(frozen=True)
class DatasetVocabulary:
    """One dataset's mapping onto the vocabulary (see the module docstring for the file format)."""

    dataset: str
    granularity: str
    classes: dict[str, ClassMap] = field(default_factory=dict)
    note: str = ""
    source: str = ""  # file the mapping came from

    def lookup(self, label: str) -> ClassMap:
        if label not in self.classes:
            raise DermbenchError(
                f"dataset {self.dataset!r}: class {label!r} is not in its vocabulary mapping ({self.source}); "
                f"add it there, mapped to one of {', '.join(TERMS)} or to null to exclude it explicitly"
            )
        return self.classes[label]

    def terms(self, label_names: list[str] | tuple[str, ...]) -> list[str | None]:
        """The vocabulary term of each class index (None: no diagnosis-level equivalent or excluded)."""
        return [self.lookup(n).term for n in label_names]

    def axes(self, label_names: list[str] | tuple[str, ...]) -> list[str | None]:
        return [self.lookup(n).axis for n in label_names]


def _parse_class(dataset: str, label: str, value: Any, source: str) -> ClassMap:
    where = f"dataset {dataset!r}, class {label!r} in {source}"
    if value is None:
        return ClassMap(label, None, None, "excluded")
    if isinstance(value, str):
        value = {"term": value}
    if not isinstance(value, dict):
        raise DermbenchError(f"{where}: expected a term, null or an object {{term, axis, note}}, got {value!r}")
    term = value.get("term")
    if term is not None and term not in TERMS:
        raise DermbenchError(f"{where}: unknown vocabulary term {term!r}; valid terms: {', '.join(TERMS)}")
    axis = value.get("axis", TERMS[term][1] if term else None)
    if axis is not None and axis not in AXIS:
        raise DermbenchError(f"{where}: unknown malignancy axis {axis!r}; valid: {', '.join(AXIS)}")
    return ClassMap(label, term, axis, str(value.get("note", "")))


def parse_mapping(dataset: str, spec: dict[str, Any], source: str = "<dict>") -> DatasetVocabulary:
    """Validate one dataset's mapping (the value under its name in a vocab JSON file)."""
    if not isinstance(spec, dict):
        raise DermbenchError(f"vocabulary mapping of {dataset!r} in {source} must be an object, got {spec!r}")
    gran = spec.get("granularity", "diagnosis")
    if gran not in GRANULARITIES:
        raise DermbenchError(
            f"vocabulary mapping of {dataset!r} in {source}: granularity {gran!r} is not one of {GRANULARITIES}"
        )
    classes = {str(k): _parse_class(dataset, str(k), v, source) for k, v in (spec.get("classes") or {}).items()}
    return DatasetVocabulary(dataset, gran, classes, str(spec.get("note", "")), source)


_FILES_CACHE: dict[str, dict[str, Any]] = {}


def _read_vocab_dir(folder: Path) -> dict[str, tuple[dict[str, Any], str]]:
    out: dict[str, tuple[dict[str, Any], str]] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.glob("*.json")):
        key = str(f)
        if key not in _FILES_CACHE:
            try:
                _FILES_CACHE[key] = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DermbenchError(f"vocabulary file {f} is not valid JSON: {e}") from None
        for name, spec in _FILES_CACHE[key].items():
            if not name.startswith("_"):
                out[name] = (spec, key)
    return out


def _module_dirs(module: str) -> list[Path]:
    """The folder of a plugin module and its parent: where ``vocab/`` is looked for (no import needed)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.origin:
        return []
    here = Path(spec.origin).parent
    return [here, here.parent]


_RUNTIME: dict[str, DatasetVocabulary] = {}


def register_mapping(dataset: str, spec: dict[str, Any]) -> DatasetVocabulary:
    """Give a dataset registered at run time (notebooks, tests) a mapping without a vocab/ file."""
    m = parse_mapping(dataset, spec, f"register_mapping({dataset!r})")
    _RUNTIME[dataset] = m
    return m


def _view_mapping(base: DatasetVocabulary, view: str) -> DatasetVocabulary:
    """The mapping of a view's own classes (dermbench.views): its labels already are terms or axis values."""
    if view == "malignant":
        classes = {a: ClassMap(a, None, a) for a in ("benign", "malignant")}
        return DatasetVocabulary(f"{base.dataset}:{view}", "coarse", classes, "malignancy axis view", base.source)
    axis = {}
    for cm in base.classes.values():  # a term keeps the base dataset's axis (HAM10000's akiec: malignant)
        if cm.term is not None:
            axis.setdefault(cm.term, cm.axis)
    terms = ("nevus", "melanoma") if view == "mel-vs-nev" else tuple(axis)
    classes = {t: ClassMap(t, t, axis.get(t, TERMS[t][1])) for t in terms}
    return DatasetVocabulary(f"{base.dataset}:{view}", "diagnosis", classes, f"view {view}", base.source)


def mapping_for(dataset: str, loader_module: str | None = None) -> DatasetVocabulary | None:
    """The vocabulary mapping of a registered dataset (or of a ``<dataset>:<view>``), or None when none ships."""
    base, _, view = dataset.partition(":")
    if view:
        m = mapping_for(base, loader_module)
        return None if m is None else _view_mapping(m, view)
    if base in _RUNTIME:
        return _RUNTIME[base]
    if loader_module is None:
        from dermbench import plugins

        entry = plugins.registry()._get("datasets", base)
        plugin = plugins.get_plugin_manager().get_plugin(entry.plugin)  # the module that registered it
        loader_module = getattr(plugin, "__name__", None) or getattr(entry.obj, "__module__", "") or ""
    for d in _module_dirs(loader_module):
        found = _read_vocab_dir(d / VOCAB_DIR)
        if base in found:
            spec, src = found[base]
            return parse_mapping(base, spec, src)
    return None


def require_mapping(dataset: str) -> DatasetVocabulary:
    m = mapping_for(dataset)
    if m is None:
        raise DermbenchError(
            f"dataset {dataset!r} has no vocabulary mapping: its plugin must ship vocab/<file>.json next to its "
            f"module with an entry {dataset.split(':')[0]!r} (see dermbench.vocabulary)"
        )
    return m


def axis_of(term: str) -> str:
    return TERMS[term][1]
