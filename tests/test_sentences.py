"""Marker aliases, normalisation, cell sentences and prompt words (fast, no model)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatial2sentence.aliases import canonical_marker, canonical_panel
from spatial2sentence.cellset import marker_columns, prepare_cells
from spatial2sentence.normalize import Normalizer
from spatial2sentence.prompts import direction_word, distance_word
from spatial2sentence.sentences import NIL, cell_sentences, phenotype_sentence, rank_markers, type_token

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    "names",
    [
        ("CD8a", "CD8A", "CD8", "cd8 alpha", "Ho165_CD8a"),
        ("E-cadherin", "ECAD", "CDH1", "CDH", "E-Cad", "Yb173_CDH", "CDH(Yb173)"),
        ("Ki-67", "KI67", "Ki67", "MKI67"),
        ("PIN", "proinsulin", "Pro-insulin"),
        ("CD45", "PTPRC"),
        ("NKX6-1", "NKX6.1"),
    ],
)
def test_aliases_meet(names):
    assert len({canonical_marker(n) for n in names}) == 1


def test_insulin_and_proinsulin_stay_apart():
    assert canonical_marker("INS") != canonical_marker("PIN")
    assert canonical_marker("insulin") == canonical_marker("INS")


def test_unknown_marker_keeps_a_stable_key():
    assert canonical_marker("My-Marker 7") == canonical_marker("my_marker7")


def test_duplicate_canonical_names_warn_and_keep_first():
    with pytest.warns(UserWarning, match="both mean"):
        m = canonical_panel(["CD8a", "CD8", "H3"])
    assert m == {"CD8a": "CD8A", "H3": "H3"}


def test_rank_markers_order_threshold_topk():
    z = np.array([[0.5, 2.0, -1.0, 1.0], [-1.0, -2.0, -0.5, -3.0]], np.float32)
    s = cell_sentences(z, ["A", "B", "C", "D"], top_k=2, threshold=0.0)
    assert s == [["B", "D"], [NIL]]
    s = cell_sentences(z, ["A", "B", "C", "D"], top_k=10, threshold=None)
    assert s[0] == ["B", "D", "A", "C"] and s[1] == ["C", "A", "B", "D"]
    order, keep = rank_markers(z, 3, 0.0, present=np.array([True, False, True, True]))
    assert list(order[0][keep[0]]) == [3, 0]  # B absent from the panel


def test_phenotype_sentence():
    assert phenotype_sentence("beta") == ["phenotype", type_token("beta")]
    assert type_token("naive Tc") == "T:naive_Tc"


def test_normaliser_statistics_follow_marker_names():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, [1.0, 10.0, 100.0], (500, 3))
    n = Normalizer(cofactor=1.0).fit(x, ["A", "B", "C"])
    full = n.transform(x, ["A", "B", "C"])
    sub = n.transform(x[:, [2, 0]], ["C", "A"])  # a panel with two of the markers, other order
    np.testing.assert_allclose(sub, full[:, [2, 0]], atol=1e-6)
    assert abs(np.median(full, axis=0)).max() < 0.05
    back = Normalizer.from_dict(n.to_dict())
    np.testing.assert_allclose(back.transform(x, ["A", "B", "C"]), full)


def test_direction_and_distance_words():
    assert direction_word(10, 0) == "east"
    assert direction_word(0, -10) == "north"  # y grows downwards in images
    assert direction_word(-5, 5) == "south-west"
    assert direction_word(0, 0) == "here"
    bins = (5, 10, 20)
    assert distance_word(3, bins) == "<5um"
    assert distance_word(12, bins) == "<20um"
    assert distance_word(50, bins) == ">20um"


def test_real_cycif_table_sentences():
    """scimap's real CyCIF table: marker columns found, sentences from the markers it has."""
    df = pd.read_csv(DATA / "scimap_cycif" / "example_data.csv", nrows=400)
    cols = [c for c in marker_columns(df) if not c.startswith(("DNA", "BG"))]
    assert "CD8A" in cols and "X_position" not in cols and "Area" not in cols
    canon = [canonical_marker(c) for c in cols]
    norm = Normalizer().fit(df[cols].to_numpy(float), canon)
    model_panel = canon + ["PIN"]  # a model panel with a marker this table lacks
    cs = prepare_cells(df, model_panel, norm, markers=cols)
    assert not cs.present[:, model_panel.index("PIN")].any()
    settings = __import__("spatial2sentence.settings", fromlist=["x"]).SentenceSettings()
    sents = cs.sentences(np.arange(len(cs)), settings)
    assert all(1 <= len(s) <= settings.top_k for s in sents)
    assert not any("PIN" in s for s in sents)
    # the CD8A-highest cells say CD8A early in their sentence
    top = np.argsort(-df["CD8A"].to_numpy())[:5]
    assert sum("CD8A" in sents[i] for i in top) >= 4


def test_real_toy_panel_reads_through_aliases():
    panel = pd.read_csv(DATA / "damond_pancreas_toy" / "panel.csv")
    canon = [canonical_marker(n) for n in panel["name"]]
    assert canon == ["H3", "CD99", "PIN", "CD8A", "CDH1"]
    damond_names = ["CD8a", "E-cadherin", "proinsulin", "histone H3", "CD99"]
    assert {canonical_marker(n) for n in damond_names} == set(canon)


def test_unknown_markers_are_listed_and_ignored():
    df = pd.DataFrame({"Object": [1, 2], "x": [0.0, 5.0], "y": [0.0, 0.0], "CD8a": [1.0, 5.0], "FOO": [3.0, 1.0]})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        cs = prepare_cells(df, ["CD8A", "H3"], Normalizer())
    assert cs.unknown_markers == ["FOO"] and cs.used_markers == ["CD8A"]
    assert any("FOO" in str(x.message) for x in w)


def test_data_on_another_intensity_scale_is_rescaled_per_image():
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 1.0, (300, 3))
    n = Normalizer().fit(x, ["A", "B", "C"])
    df = pd.DataFrame({"Object": np.arange(300), "x": rng.uniform(0, 100, 300), "y": rng.uniform(0, 100, 300),
                       "A": x[:, 0] * 1000, "B": x[:, 1] * 1000, "C": x[:, 2] * 1000})
    cs = prepare_cells(df, ["A", "B", "C"], n)  # safeguard off: everything clipped high
    assert (cs.z > 4).mean() > 0.9
    with pytest.warns(UserWarning, match="training scale"):
        cs = prepare_cells(df, ["A", "B", "C"], n, rescale_offset_z=3.0)
    assert abs(np.median(cs.z)) < 0.5
    same = pd.DataFrame({**{k: df[k] for k in ("Object", "x", "y")}, "A": x[:, 0], "B": x[:, 1], "C": x[:, 2]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_cells(same, ["A", "B", "C"], n, rescale_offset_z=3.0)


def test_range_ranking_names_the_majority_types_own_marker():
    """In tissue dominated by one type, z (centred on the median cell) puts that type's own marker near 0,
    so it drops out of the type's sentences; ranking by the marker's training range keeps it first."""
    from spatial2sentence.settings import SentenceSettings

    rng = np.random.default_rng(0)
    n_major, n_minor = 700, 300
    amy = np.r_[rng.normal(30, 3, n_major), rng.normal(1, 0.3, n_minor)]  # acinar marker, 70% of cells
    gcg = np.r_[rng.normal(1, 0.3, n_major), rng.normal(30, 3, n_minor)]  # minority-type marker
    noise = rng.gamma(2.0, 0.5, (n_major + n_minor, 3))  # unspecific markers
    df = pd.DataFrame({"AMY2A": amy, "GCG": gcg, "CD3E": noise[:, 0], "CD20": noise[:, 1],
                       "CD68": noise[:, 2], "x": rng.uniform(0, 500, amy.size), "y": rng.uniform(0, 500, amy.size)})
    markers = ["AMY2A", "GCG", "CD3E", "CD20", "CD68"]
    norm = Normalizer().fit(df[markers].to_numpy(np.float64), markers)
    assert set(norm.lo) == set(markers) and all(norm.hi[m] > norm.lo[m] for m in markers)
    cs = prepare_cells(df, markers, norm)
    major = np.arange(n_major)

    def first_word_share(rank_by):
        s = SentenceSettings(top_k=2, threshold=0.0 if rank_by == "z" else 0.5, rank_by=rank_by)
        sents = cs.sentences(major, s)
        return np.mean([len(w) > 0 and w[0] == "AMY2A" for w in sents])

    assert first_word_share("range") > 0.9, first_word_share("range")
    assert first_word_share("z") < 0.5
    with pytest.raises(Exception, match="rank_by"):
        cs.sentences(major[:3], SentenceSettings(rank_by="bogus"))
