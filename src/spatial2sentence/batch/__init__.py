"""Batch annotation of a folder of IMC images: every cell typed, per image and for the whole run.

Pure library code (no Qt): used by ``s2s annotate``, the napari batch widget and ``benchmarks/batch.py``.

Inputs (:func:`discover`)
-------------------------
``INPUT`` is read as the first of these that fits:

1. **steinbock folder**: ``INPUT/img/`` exists. Images ``img/X.tiff`` with masks ``masks/X.tiff`` and the
   channels named by ``panel.csv`` (steinbock's own layout, :func:`~spatial2sentence.io.read_steinbock`).
2. **MCD folder**: ``INPUT`` holds ``*.mcd`` files. Every acquisition of ``F.mcd`` is one image named
   ``F_<acquisition id, 3 digits>`` (steinbock's naming); its mask must be
   ``INPUT/masks/F_<id:03d>.tiff`` (or ``.tif``), e.g. ``masks/slide1_001.tiff``. Channels are named by
   ``INPUT/panel.csv`` when it exists (matched by metal tag), else by the acquisition's channel labels.
3. **image + mask folder**: every other TIFF directly in ``INPUT`` (``.tiff``, ``.tif``, ``.ome.tiff``)
   is an image ``X``; its mask is ``X_mask.tiff`` beside it (also ``X_mask.tif``), else
   ``masks/X.tiff`` (or ``masks/X.tif``). Files named ``*_mask.tif(f)`` are never images. Channels
   are named by ``INPUT/panel.csv`` when it exists, else by the OME / ImageJ metadata.

An image whose mask is missing, or that cannot be read, measured or predicted, is reported in
``errors.csv`` and the run goes on.

Outputs (under ``OUT``)
-----------------------
Per image ``X`` (written by :func:`annotate_job`, each file atomically: temporary name, then rename):

- ``cells/X.csv``: ``Object``, ``x``, ``y`` (um), ``area`` (px), the mean of every marker (and
  ``nonfinite_pixels`` when the image has NaN/inf pixels), ``cell_type``, ``cell_type_probability``,
  ``p_<type>`` for every type, per-cell ``status``, ``status_probability``, ``p_status_<label>``;
- ``types/X.tiff``: the class-ID mask (0 = background, k = k-th class of the model + 1; a cell the
  model could not type is 0 too); uint8 (uint16 beyond 254 classes);
- ``overlays/X.png``: cell types blended over a grey DNA/H3 composite (mean of all channels when the
  image has no DNA/histone channel), cell borders darker, with a legend of the types present;
- ``done/X.json``: written LAST: the image's clinical status, cell count, markers used, warnings, the
  model's fingerprint, timings. An image counts as done when this file and the three outputs above
  exist and the model fingerprint matches; a rerun skips done images unless ``overwrite``.

For the run (rebuilt at the end from the per-image files of every image of ``INPUT`` that is done):
``summary.csv`` (per image: cells, counts per type, predicted clinical status, whether it is confident, and its probabilities),
``cells.h5ad`` (AnnData: ``X`` marker means, ``obs`` predictions with ``image`` and ``Object``,
``obsm['spatial']`` x, y in um, ``uns`` class names and colours, per-image status), ``errors.csv``
(``image``, ``file``, ``reason``: the images that failed in this run) and ``run.json`` (model,
versions, settings, timings).

Execution
---------
In-process (default), on a new ``distributed.LocalCluster`` (``workers=N``: N processes with one
thread each, torch limited to one thread), or on an existing Dask cluster (``scheduler=
"tcp://host:port"``; its workers need spatial2sentence installed and ``OUT`` on a shared file
system). Each image is one task; the model is loaded once per worker process (the core's model
cache, :func:`spatial2sentence.annotate.load_model`). Results do not depend on how the images are run.

A killed run leaves every finished image intact (atomic writes; stale temporary files are removed
at the start of the next run) and the next run continues where it stopped. One run at a time writes
into an output folder (:func:`~spatial2sentence.io.folder_lock`): a second is refused at once.

Modules: :mod:`.discover` (finding and reading the images), :mod:`.overlay` (the overlay PNG),
:mod:`.outputs` (per-image and run-level files), :mod:`.run` (running in-process or on Dask).
"""

from .discover import Discovery, ImageJob, discover, read_job
from .outputs import SUBDIRS, clean_stale_parts, collect_outputs, output_paths, read_done, versions, write_h5ad
from .overlay import overlay_zoom, render_overlay
from .run import BatchResult, annotate_job, model_meta, run_batch

__all__ = [
    "ImageJob", "Discovery", "BatchResult", "discover", "read_job", "annotate_job", "run_batch", "collect_outputs",
    "write_h5ad", "model_meta", "render_overlay", "overlay_zoom", "output_paths", "read_done", "clean_stale_parts",
    "versions", "SUBDIRS",
]
