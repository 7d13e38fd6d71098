import gzip
import os

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy.ndimage import maximum_filter
from conftest import DAMOND_TOY, RAW, STEINBOCK

import spatial2sentence.io
from spatial2sentence.errors import ImageReadError, MaskError, PanelError, first_line
from spatial2sentence.io import (
    mcd_acquisition_ids, read_image, read_imc_txt, read_mask, read_mcd, read_mcd_acquisition, read_panel,
    read_steinbock, write_csv_atomic, write_tiff_atomic,
)



def steinbock_hot_pixel_filter(data: np.ndarray, threshold: float) -> np.ndarray:
    """steinbock's hot-pixel filter (the reference our .mcd pixels are compared with): a pixel exceeding
    the maximum of its 8 neighbours by more than ``threshold`` is set to that maximum (footprint and
    "mirror" border mode as in steinbock)."""
    footprint = np.ones((1, 3, 3), dtype=bool)
    footprint[0, 1, 1] = False
    neighbour_max = maximum_filter(data, footprint=footprint, mode="mirror")
    return np.where(data - neighbour_max > threshold, neighbour_max, data)


def test_same_acquisition_from_mcd_txt_and_steinbock_tiff():
    """readimc pixels: .txt equals .mcd to its 5e-4 decimal rounding; steinbock's TIFF is the .mcd after
    the hot-pixel filter (threshold 50), exactly; channel names agree through the panel."""
    panel = read_panel(STEINBOCK / "panel.csv")
    images = pd.read_csv(STEINBOCK / "images.csv")
    checked = 0
    for mcd_path in sorted(RAW.glob("*/*.mcd")):
        for acq in read_mcd(mcd_path, panel):
            row = images[images["image"] == f"{acq.name}.tiff"].iloc[0]
            txt = read_imc_txt(mcd_path.parent / row["recovery_file"], panel)
            tiff = read_image(STEINBOCK / "img" / row["image"], panel)
            assert acq.channels == txt.channels == tiff.channels
            assert acq.metals == txt.metals == tiff.metals == list(panel["channel"])
            assert acq.data.shape == txt.data.shape == tiff.data.shape
            np.testing.assert_allclose(txt.data, acq.data, rtol=1e-6, atol=5e-4)
            assert np.array_equal(steinbock_hot_pixel_filter(acq.data, 50), tiff.data)
            checked += 1
    assert checked == 15


def test_ome_tiff_channel_names_and_pixel_size(tmp_path):
    ome = read_image(STEINBOCK / "ome" / "20210305_NE_mockData1_001.ome.tiff")
    assert ome.channels == ["Ag107", "Cytokeratin 5", "Laminin", "YBX1", "H3K27Ac"]
    assert ome.metals == ["Ag107", "Pr141", "Sm147", "Eu153", "Yb172"]
    plain = read_image(STEINBOCK / "img" / "20210305_NE_mockData1_001.tiff", STEINBOCK / "panel.csv")
    assert np.array_equal(ome.data, plain.data)
    data = np.arange(2 * 6 * 7, dtype=np.float32).reshape(2, 6, 7)
    path = write_tiff_atomic(tmp_path / "x.ome.tiff", data, ["CD3", "CD20"], ome=True, pixel_size_um=0.5)
    image = read_image(path)
    assert image.channels == ["CD3", "CD20"] and image.pixel_size_um == 0.5
    assert read_image(path, pixel_size_um=2.0).pixel_size_um == 2.0


def test_yxc_and_page_stacks_are_recognised(tmp_path, rng):
    data = rng.random((4, 30, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "yxc.tiff", np.moveaxis(data, 0, -1), planarconfig="contig")
    tifffile.imwrite(tmp_path / "pages.tiff", data)  # one page per channel, no axes metadata
    for name in ("yxc.tiff", "pages.tiff"):
        image = read_image(tmp_path / name)
        assert np.array_equal(image.data, data), name
        assert image.channels == [f"channel_{i}" for i in range(4)]


def test_ambiguous_stack_needs_axes(tmp_path, rng):
    data = rng.random((30, 30, 30)).astype(np.float32)
    tifffile.imwrite(tmp_path / "cube.tiff", data)
    with pytest.raises(ImageReadError, match="cube.tiff: 3-D stack of shape .* ambiguous axes"):
        read_image(tmp_path / "cube.tiff")
    assert np.array_equal(read_image(tmp_path / "cube.tiff", axes="YXC").data, np.moveaxis(data, -1, 0))


def test_semicolon_panel_and_keep(tmp_path):
    path = tmp_path / "panel.csv"
    path.write_text("channel;name;keep\nSm147;CD3;1\nNd150;CD8a;0\nIr191;DNA1;1\n")
    panel = read_panel(path)
    assert panel["name"].tolist() == ["CD3", "CD8a", "DNA1"]
    assert panel["keep"].tolist() == [True, False, True]


def test_panel_selects_kept_channels_of_full_image(tmp_path, tiny_image):
    path = tmp_path / "p.csv"
    path.write_text("channel,name,keep\nA1,CD3,1\nA2,junk,0\nA3,DNA1,1\n")
    image = read_image(tiny_image["image"], path)
    assert image.channels == ["CD3", "DNA1"]
    assert np.array_equal(image.data, tiny_image["data"][[0, 2]])


def test_float_mask_with_integral_values_is_accepted(tmp_path, tiny_image):
    tifffile.imwrite(tmp_path / "fmask.tiff", tiny_image["mask"].astype(np.float32))
    mask = read_mask(tmp_path / "fmask.tiff")
    assert np.issubdtype(mask.dtype, np.integer) and np.array_equal(mask, tiny_image["mask"])


def test_damond_toy_reads_with_panel_and_labels_match_mask_ids():
    image = read_image(DAMOND_TOY / "img" / "E34.tiff", DAMOND_TOY / "panel.csv")
    assert image.channels == ["H3", "CD99", "PIN", "CD8a", "CDH"]
    mask = read_mask(DAMOND_TOY / "masks" / "E34.tiff", image.shape)
    labels = pd.read_csv(DAMOND_TOY / "labels.csv")
    assert set(np.unique(mask[mask > 0])) == set(labels.loc[labels.image == "E34", "Object"])


def test_steinbock_folder_lists_images_in_images_csv_order():
    folder = read_steinbock(STEINBOCK)
    order = pd.read_csv(STEINBOCK / "images.csv")["image"].str.replace(".tiff", "").tolist()
    assert [e.name for e in folder.entries] == order
    assert all(e.mask_path is not None for e in folder.entries)


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: p, ImageReadError, "file not found"),
        (lambda p: (p.write_bytes(b"II*\x00garbage" * 10), p)[1], ImageReadError, "not a readable TIFF"),
        (lambda p: (tifffile.imwrite(p, np.ones((20, 20), np.float32)), p)[1], ImageReadError,
         "2-D single-channel image"),
    ],
)
def test_bad_images(tmp_path, make, error, message):
    path = make(tmp_path / "bad.tiff")
    with pytest.raises(error, match=f"bad.tiff: .*{message}"):
        read_image(path)


def test_bad_masks(tmp_path):
    cases = {
        "half.tiff": (np.full((5, 5), 1.5, np.float32), "not integer"),
        "nan.tiff": (np.full((5, 5), np.nan, np.float32), "not integer"),
        "empty.tiff": (np.zeros((5, 5), np.uint16), "no cells"),
        "stack.tiff": (np.ones((2, 5, 5), np.uint16), "must be 2-D"),
    }
    for name, (array, message) in cases.items():
        tifffile.imwrite(tmp_path / name, array)
        with pytest.raises(MaskError, match=f"{name}: .*{message}"):
            read_mask(tmp_path / name)
    tifffile.imwrite(tmp_path / "ok.tiff", np.ones((5, 5), np.uint16))
    with pytest.raises(MaskError, match=r"ok.tiff: mask shape \(5, 5\) differs from image shape \(6, 5\)"):
        read_mask(tmp_path / "ok.tiff", shape=(6, 5))


def test_bad_panels(tmp_path, tiny_image):
    dup = tmp_path / "dup.csv"
    dup.write_text("channel,name,keep\nA1,CD3,1\nA2,CD3,1\nA3,DNA1,1\n")
    with pytest.raises(PanelError, match="dup.csv: duplicate marker names: 'CD3' is repeated"):
        read_panel(dup)
    short = tmp_path / "short.csv"
    short.write_text("channel,name,keep\nA1,CD3,1\nA2,CD8,1\n")
    with pytest.raises(PanelError, match="short.csv: panel has 2 kept channels .* img.tiff has 3 channels"):
        read_image(tiny_image["image"], short)
    noname = tmp_path / "noname.csv"
    noname.write_text("channel,marker\nA1,CD3\n")
    with pytest.raises(PanelError, match="noname.csv: panel needs a 'name' column"):
        read_panel(noname)


def test_reading_never_modifies_inputs(tiny_image):
    before = {p: p.read_bytes() for p in (tiny_image["image"], tiny_image["mask_path"])}
    image = read_image(tiny_image["image"])
    read_mask(tiny_image["mask_path"])
    with pytest.raises((ValueError, OSError)):
        image.data[0, 0, 0] = 1.0  # memory-mapped read-only
    assert all(p.read_bytes() == b for p, b in before.items())


def test_writers_are_deterministic_and_follow_umask(tmp_path, rng):
    data = rng.random((3, 8, 9)).astype(np.float32)
    a = write_tiff_atomic(tmp_path / "a.ome.tiff", data, ["A", "B", "C"], ome=True)
    b = write_tiff_atomic(tmp_path / "b.ome.tiff", data, ["A", "B", "C"], ome=True)
    assert a.read_bytes() == b.read_bytes()
    assert read_image(a).channels == ["A", "B", "C"]
    umask = os.umask(0)
    os.umask(umask)
    assert (a.stat().st_mode & 0o777) == (0o666 & ~umask)


def test_csv_writer_compresses_by_target_suffix(tmp_path):
    path = write_csv_atomic(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.csv.gz")
    assert gzip.open(path, "rt").read().splitlines() == ["a", "1", "2"]


def test_single_mcd_acquisition_equals_full_read():
    mcd = RAW / "20210305_NE_mockData2" / "20210305_NE_mockData2.mcd"
    panel = read_panel(STEINBOCK / "panel.csv")
    every = read_mcd(mcd, panel)
    assert mcd_acquisition_ids(mcd) == [1, 2, 3]
    one = read_mcd_acquisition(mcd, 2, panel)
    assert one.name == every[1].name and one.channels == every[1].channels
    assert np.array_equal(one.data, every[1].data)
    with pytest.raises(ImageReadError, match="no acquisition 9"):
        read_mcd_acquisition(mcd, 9)


def test_one_line_message_cut_at_300_characters():
    assert first_line(ValueError("  bad header\n  at byte 12\n")) == "bad header"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(OSError("x" * 1000)) == "x" * 300


def test_io_package_exports_resolve():
    """Every name of ``spatial2sentence.io.__all__`` exists (the package re-exports its modules' names)."""
    assert len(set(spatial2sentence.io.__all__)) == len(spatial2sentence.io.__all__)
    for name in spatial2sentence.io.__all__:
        assert getattr(spatial2sentence.io, name).__module__.startswith("spatial2sentence.io.")
