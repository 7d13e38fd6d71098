"""Marker aliases, normalisation, cell sentences and prompt words (fast, no model)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spatial2sentence.aliases import canonical_marker
from spatial2sentence.cellset import marker_columns, prepare_cells
from spatial2sentence.normalize import Normalizer
from spatial2sentence.prompts import direction_word, distance_word
from spatial2sentence.sentences import NIL, cell_sentences, phenotype_sentence, rank_markers, type_token

from conftest import TEST_DATA as DATA  # noqa: E402


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


# --- levels sentences (SentenceSettings.encoding = "levels") -----------------------------------------
def _level_table(seed=0, n=400):
    """Generated cells: 3 markers with skewed positive values, plus positions."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"Object": np.arange(1, n + 1), "x": rng.uniform(0, 300, n), "y": rng.uniform(0, 300, n),
                         "CD3": rng.gamma(0.8, 4.0, n), "CD20": rng.gamma(2.0, 1.0, n),
                         "PIN": np.r_[rng.gamma(5.0, 5.0, n // 4), rng.gamma(0.5, 0.5, n - n // 4)]})


def _level_norm(df, markers, n_levels=8, bins="quantile", threshold=0.05):
    vals = df[markers].to_numpy(np.float64)
    return Normalizer().fit(vals, markers).fit_levels(vals, markers, n_levels, threshold, bins)


@pytest.mark.parametrize("bins", ["quantile", "equal"])
def test_levels_are_monotone_in_value_and_span_the_bins(bins):
    from spatial2sentence.settings import SentenceSettings
    from spatial2sentence.sentences import word_marker

    df = _level_table()
    markers = ["CD3E", "CD20", "PIN"]
    df = df.rename(columns={"CD3": "CD3E"})
    norm = _level_norm(df, markers, 8, bins)
    assert set(norm.levels) == set(markers) and all(len(e) == 7 for e in norm.levels.values())
    assert all(np.all(np.diff(e) >= 0) for e in norm.levels.values())
    cs = prepare_cells(df, markers, norm)
    s = SentenceSettings(encoding="levels", n_levels=8, level_bins=bins, level_threshold=0.05)
    sents = cs.sentences(np.arange(len(df)), s)
    u = cs.range_values(np.arange(len(df)))
    for j, m in enumerate(markers):
        got = {}  # cell -> level of marker m
        for i, w in enumerate(sents):
            for word in w:
                if word_marker(word) == m:
                    got[i] = int(word.rsplit(":", 1)[1])
        cells = np.array(sorted(got))
        # every cell above the threshold has the marker's word, none below
        assert set(cells) == set(np.flatnonzero(u[:, j] > 0.05))
        lev = np.array([got[i] for i in cells])
        order = np.argsort(u[cells, j], kind="stable")
        assert np.all(np.diff(lev[order]) >= 0)  # higher value, never a lower level
        assert lev.min() >= 1 and lev.max() <= 8
        if bins == "quantile":  # quantile bins use all 8 levels, each with a fair share of the cells
            counts = np.bincount(lev, minlength=9)[1:]
            assert (counts > 0).all() and counts.max() < 3 * len(lev) / 8
    # words within a sentence: highest range value first
    for i in range(40):
        vals = [u[i, markers.index(word_marker(w))] for w in sents[i] if w != NIL]
        assert vals == sorted(vals, reverse=True)


def test_level_sentences_respect_the_panel_and_empty_cells():
    from spatial2sentence.sentences import level_sentences, level_word, marker_levels, word_marker

    edges = np.array([[0.25, 0.5, 0.75]] * 3, np.float32)
    u = np.array([[0.9, 0.3, 0.0], [0.01, 0.02, 0.0], [0.5, 0.8, 0.6]], np.float32)
    assert marker_levels(u, edges).tolist() == [[4, 2, 1], [1, 1, 1], [3, 4, 3]]
    s = level_sentences(u, ["A", "B", "C"], edges, threshold=0.05)
    assert s == [["A:4", "B:2"], [NIL], ["B:4", "C:3", "A:3"]]
    present = np.array([True, False, True])
    assert level_sentences(u, ["A", "B", "C"], edges, 0.05, present)[2] == ["C:3", "A:3"]
    assert word_marker(level_word("HLA-DR", 7)) == "HLA-DR" and word_marker("T:beta") == "T:beta"
    assert word_marker("CD3") == "CD3" and word_marker("A:b") == "A:b"


def test_level_bins_round_trip_through_save_and_load(tmp_path):
    from spatial2sentence.model import S2SModel
    from spatial2sentence.settings import ModelSettings, SentenceSettings
    from spatial2sentence.training import add_level_words

    df = _level_table(1).rename(columns={"CD3": "CD3E"})
    markers = ["CD3E", "CD20", "PIN"]
    norm = _level_norm(df, markers, 10)
    s = SentenceSettings(encoding="levels", n_levels=10)
    model = S2SModel.create(markers, ["a", "b"], ["S1"], norm, sentence=s,
                            model=ModelSettings(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
                            device="cpu")
    add_level_words(model, 10, seed=0)
    model.save_pretrained(tmp_path / "m")
    back = S2SModel.from_pretrained(tmp_path / "m", device="cpu")
    assert back.sentence == s and back.normalizer.levels == norm.levels
    words = [w for p in back.prompts_for(df) for w in p["text"].split(" ")]
    assert any(":" in w and w.split(":")[0] in markers for w in words)
    assert back.tokenizer.unk_id not in [t for p in back.prompts_for(df) for t in p["tokens"]]
    assert back.prompts_for(df) == model.prompts_for(df)
    assert len(back.tokenizer) == len(model.tokenizer) >= 3 * 10 + 3


def test_configs_without_the_encoding_read_as_ranked():
    import json

    from spatial2sentence.model import DEFAULT_MODEL_DIR
    from spatial2sentence.settings import SentenceSettings

    old = {"cofactor": 1.0, "scaling": "model", "top_k": 12, "threshold": 0.3, "rank_by": "range"}
    assert SentenceSettings.from_dict(old).encoding == "ranked"
    assert Normalizer.from_dict({"cofactor": 1.0, "centre": {"A": 0.0}, "scale": {"A": 1.0}}).levels == {}
    stored = json.loads((DEFAULT_MODEL_DIR / "s2s_config.json").read_text())
    if "encoding" not in stored["sentence"]:  # the shipped v1 model: ranked sentences, identical words
        from spatial2sentence.model import S2SModel

        m = S2SModel.from_pretrained(None, device="cpu")
        assert m.sentence.encoding == "ranked" and m.normalizer.levels == {}
        df = _level_table(2).rename(columns={"CD3": "CD3E"})
        cs = m.prepare(df)
        want = cell_sentences(cs.rank_values(np.arange(len(cs)), m.sentence), m.markers, m.sentence.top_k,
                              m.sentence.threshold, cs.present)
        assert cs.sentences(np.arange(len(cs)), m.sentence) == want
        assert all(":" not in w for s in want for w in s)
