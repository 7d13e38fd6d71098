import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import STEINBOCK
from scipy import ndimage

from spatial2sentence.errors import MaskError
from spatial2sentence.io import read_image, read_mask, read_steinbock
from spatial2sentence.measure import NonFiniteWarning, measure_cells


def test_measure_reproduces_steinbock_on_every_image():
    folder = read_steinbock(STEINBOCK, mask_dir="masks_deepcell")
    assert len(folder.entries) == 15
    for entry in folder.entries:
        image = read_image(entry.image_path, folder.panel)
        cells = measure_cells(image, read_mask(entry.mask_path, image.shape))
        intensities = pd.read_csv(STEINBOCK / "intensities_deepcell" / f"{entry.name}.csv")
        regionprops = pd.read_csv(STEINBOCK / "regionprops_deepcell" / f"{entry.name}.csv")
        assert cells["Object"].tolist() == intensities["Object"].tolist()
        for marker in image.channels:
            ref = intensities[marker].to_numpy()
            rel = np.abs(cells[marker].to_numpy() - ref) / np.maximum(np.abs(ref), 1e-12)
            assert rel.max() < 1e-4, (entry.name, marker)
        assert np.abs(cells["y"] - regionprops["centroid-0"]).max() < 1e-3
        assert np.abs(cells["x"] - regionprops["centroid-1"]).max() < 1e-3
        assert (cells["area"].to_numpy() == regionprops["area"].to_numpy()).all()


def test_measure_generated_image_matches_ndimage(tiny_image):
    data, mask = tiny_image["data"], tiny_image["mask"]
    cells = measure_cells(data, mask, ["a", "b", "c"], pixel_size_um=0.5)
    ids = [1, 2, 3, 7]
    assert cells["Object"].tolist() == ids
    for c, name in enumerate("abc"):
        np.testing.assert_allclose(cells[name], ndimage.mean(data[c], mask, ids), rtol=1e-6)
    centroids = np.array(ndimage.center_of_mass(np.ones_like(mask), mask, ids))
    np.testing.assert_allclose(cells["y"], centroids[:, 0] * 0.5)
    np.testing.assert_allclose(cells["x"], centroids[:, 1] * 0.5)
    assert cells["area"].tolist() == [int((mask == i).sum()) for i in ids]


def test_sparse_large_ids_are_compacted(rng):
    mask = np.zeros((20, 20), np.uint32)
    mask[1:4, 1:4] = 4_000_000_000
    mask[10:12, 10:15] = 5
    data = rng.random((2, 20, 20))
    cells = measure_cells(data, mask)
    assert cells["Object"].tolist() == [5, 4_000_000_000]
    assert cells["area"].tolist() == [10, 9]
    np.testing.assert_allclose(cells["channel_0"], ndimage.mean(data[0], mask, [5, 4_000_000_000]))


def test_nonfinite_pixels_flag_cells_without_crash(tiny_image):
    data = tiny_image["data"].copy()
    data[1, 16, 21] = np.nan  # inside cell 2
    data[0, 3, 4] = np.inf  # inside cell 1
    with pytest.warns(NonFiniteWarning, match="NaN or inf"):
        cells = measure_cells(data, tiny_image["mask"], ["a", "b", "c"], source="img.tiff")
    flags = dict(zip(cells["Object"], cells["nonfinite_pixels"]))
    assert flags == {1: 1, 2: 1, 3: 0, 7: 0}
    assert np.isfinite(cells[["a", "b", "c"]].to_numpy()).all()
    in_cell2 = (tiny_image["mask"] == 2) & np.isfinite(data[1])
    assert cells.loc[cells.Object == 2, "b"].item() == pytest.approx(data[1][in_cell2].mean(), rel=1e-6)


def test_finite_image_has_no_flag_column(tiny_image):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cells = measure_cells(tiny_image["data"], tiny_image["mask"])
    assert "nonfinite_pixels" not in cells.columns


def test_measure_rejects_shape_mismatch_and_empty_mask(tiny_image):
    with pytest.raises(MaskError, match="differs from image shape"):
        measure_cells(tiny_image["data"], tiny_image["mask"][:-1], source="m.tiff")
    with pytest.raises(MaskError, match="no cells"):
        measure_cells(tiny_image["data"], np.zeros((40, 50), np.uint16), source="m.tiff")
