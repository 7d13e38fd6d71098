"""Marker-name aliases, so that a model trained on one panel reads another panel's shared markers.

Every marker name is reduced to a *canonical* name before it enters a sentence: ``CD8a``, ``CD8A``,
``CD8`` all become ``CD8A``; ``E-cadherin``, ``ECAD``, ``CDH1`` and ``CDH`` become ``CDH1``... Names are
first turned into a lookup key (upper case, without spaces, dashes, dots, underscores, slashes and
brackets), then looked up in :data:`ALIASES`; a name without an entry keeps its key as canonical name
(so ``Ki-67`` and ``KI67`` still meet even without a table entry).

Choices (ours, documented): insulin (``INS``) and proinsulin (``PIN``) are *different* markers, as in
Damond et al. 2019 whose panel measures both; proinsulin is the name the toy images use (``PIN``).
Metal-tag prefixes such as ``Yb173_CDH`` or ``CDH(Yb173)`` are stripped.
"""

from __future__ import annotations

import re

# canonical name -> alternative spellings (any case, any punctuation)
_TABLE: dict[str, tuple[str, ...]] = {
    "CD8A": ("CD8", "CD8a", "CD8 alpha", "CD8alpha"),
    "CD3E": ("CD3", "CD3e", "CD3epsilon", "CD3D"),
    "CDH1": ("E-cadherin", "ECAD", "E-Cad", "ECadherin", "CDH", "Cadherin", "pan-cadherin", "CDH1"),
    "KI67": ("Ki-67", "Ki67", "MKI67", "KI67"),
    "PIN": ("proinsulin", "pro-insulin", "PROINS", "PIN"),
    "INS": ("insulin", "INS"),
    "GCG": ("glucagon", "GCG"),
    "SST": ("somatostatin", "SST"),
    "PPY": ("pancreatic polypeptide", "PP", "PPY"),
    "IAPP": ("amylin", "IAPP"),
    "H3": ("histone H3", "HistoneH3", "H3", "Histone3"),
    "SMA": ("aSMA", "alphaSMA", "alpha-SMA", "ACTA2", "SMA", "ASMA"),
    "PTPRC": ("CD45", "PTPRC"),
    "CD45RA": ("CD45RA",),
    "CD45RO": ("CD45RO",),
    "KRT19": ("CK19", "cytokeratin 19", "KRT19"),
    "PANCK": ("pan-cytokeratin", "panCK", "pan-CK", "PanKeratin", "cytokeratin"),
    "PECAM1": ("CD31", "PECAM1", "PECAM"),
    "CD20": ("MS4A1", "CD20"),
    "FOXP3": ("FOXP3", "FoxP3"),
    "SLC2A1": ("GLUT1", "SLC2A1"),
    "AMY2A": ("amylase", "AMY2A", "AMY"),
    "NKX61": ("NKX6.1", "NKX6-1", "NKX61"),
    "PCSK2": ("PC2", "PCSK2"),
    "PTPRN": ("IA2", "IA-2", "PTPRN"),
    "SYP": ("synaptophysin", "SYP"),
    "CHGA": ("chromogranin A", "chromogranin", "CHGA"),
    "HLADR": ("HLA-DR", "HLADR", "MHCII", "MHC-II"),
    "MPO": ("myeloperoxidase", "MPO"),
    "CD68": ("CD68",),
    "CD4": ("CD4",),
    "CD99": ("CD99", "MIC2"),
    "CD44": ("CD44",),
    "CD38": ("CD38",),
    "PDX1": ("PDX1", "PDX-1"),
    "PHH3": ("pHH3", "phospho-histone H3", "pH3", "PHH3"),
    "CCASP3": ("cleaved caspase 3", "cCASP3", "cleaved caspase-3", "CC3"),
    "CPARP": ("cleaved PARP", "cPARP", "CPARP"),
    "CPARPCCASP3": ("cPARP_cCASP3", "cPARP-cCASP3", "cPARP/cCASP3"),
    "GAPDH": ("GAPDH",),
    "VIM": ("vimentin", "VIM"),
    "COL1": ("collagen I", "collagen 1", "COL1A1", "collagen"),
    "DNA1": ("DNA1", "Ir191", "DNA_1"),
    "DNA2": ("DNA2", "Ir193", "DNA_2"),
}

_METAL = re.compile(r"^(?:[A-Z][a-z]?\d{2,3}[_\- ]+)|(?:[\(\[][A-Z][a-z]?\d{2,3}(?:Di)?[\)\]])$")
_PUNCT = re.compile(r"[\s\-_.,/\\()\[\]:;'\"+]+")


def _key(name: str) -> str:
    name = str(name).strip()
    name = _METAL.sub("", name).strip()
    return _PUNCT.sub("", name).upper()


ALIASES: dict[str, str] = {}
for _canon, _alts in _TABLE.items():
    ALIASES[_key(_canon)] = _canon
    for _alt in _alts:
        ALIASES[_key(_alt)] = _canon


def canonical_marker(name: str) -> str:
    """The canonical name of one marker (``"CD8a"`` -> ``"CD8A"``, ``"E-cadherin"`` -> ``"CDH1"``)."""
    key = _key(name)
    if not key:
        return str(name).strip()
    return ALIASES.get(key, key)
