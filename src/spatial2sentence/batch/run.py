"""Running a batch: every image of the input folder annotated by the core
(:func:`spatial2sentence.annotate.annotate_image`) and written (:mod:`.outputs`), in this process or as
one Dask task per image; then the run-level files. See the :mod:`spatial2sentence.batch` doc."""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..annotate import annotate_image, load_model, model_dir
from ..errors import S2SInputError, first_line
from ..io import folder_lock, write_json_atomic
from ..model import check_dtype, check_model_dir, resolve_device
from ..palette import label_colors
from ..predict import PREDICT_BATCH_SIZE
from .discover import Discovery, ImageJob, discover, read_job
from .outputs import _col, clean_stale_parts, collect_outputs, read_done, versions, write_done, write_image_files
from .overlay import render_overlay

# ``progress(record, done, total)``: called with ``record=None`` before the first image, then as each
# image finishes; returning False stops the run after the current image (the core's one convention)
BatchProgress = Callable[[dict | None, int, int], "bool | None"]


def model_meta(model: str | Path | None) -> dict:
    """Label sets, markers and a fingerprint of a model directory, without loading torch."""
    path = model_dir(model)
    cfg = check_model_dir(path)  # the one model-folder check (one message for every problem)
    h = hashlib.sha256()
    for name in ("s2s_config.json", "config.json", "tokenizer.json", "model.safetensors"):
        p = path / name
        if p.is_file():
            h.update(name.encode())
            with open(p, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
    return {
        "path": str(path.resolve()),
        "default": model is None,
        "fingerprint": h.hexdigest()[:16],
        "type_labels": list(cfg["type_labels"]),
        "status_labels": list(cfg["status_labels"]),
        "markers": list(cfg.get("markers", [])),
        "name": cfg.get("info", {}).get("name"),
    }


# ----------------------------------------------------------------------------------------- one image
def _record(job: ImageJob, state: str, **kw) -> dict:
    rec = {"image": job.name, "source": job.source, "file": None, "reason": None, "state": state, "cells": None,
           "status": None, "status_probability": None, "seconds": None}
    rec.update(kw)
    return rec


def _skipped(job: ImageJob, done: dict) -> dict:
    return _record(job, "skipped", cells=done["cells"], status=done.get("status"),
                   status_probability=done.get("status_probability"), seconds=0.0)


def annotate_job(job: ImageJob, out_dir: str, model: str | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int | None = None, overwrite: bool = False,
                 fingerprint: str | None = None, torch_threads: int | None = None, allow_partial_panel: bool = False) -> dict:
    """Annotate one image of a batch and write its four outputs; never raises for a bad input.

    ``torch_threads``: batches scored at once (1 in Dask workers, which run one image per worker
    process; default: every available core). Each batch runs on one torch thread, so the outputs are the
    same bytes whatever this is (:mod:`spatial2sentence.threads`); torch's own setting is not changed.

    Returns a record: ``image``, ``state`` (``done``, ``skipped``, ``error`` or ``cancelled``),
    ``cells``, ``status``, ``status_probability``, ``file`` and ``reason`` (errors), ``seconds``.
    """
    if not overwrite and (done := read_done(out_dir, job.name, fingerprint)) is not None:
        return _skipped(job, done)
    t0 = time.perf_counter()
    try:
        rec = _annotate_and_write(job, out_dir, model, device, dtype, batch_size, fingerprint, torch_threads,
                                  allow_partial_panel)
    except S2SInputError as err:
        # a problem of the cells (the panel check) names the image, not a file: name the image's file
        file = err.source if err.source and err.source != job.name else job.source
        return _record(job, "error", file=file, reason=err.problem, seconds=time.perf_counter() - t0)
    except Exception as err:  # a bug or an unforeseen file problem must not stop the run
        tb = traceback.extract_tb(err.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        return _record(job, "error", file=job.source, reason=f"unexpected {type(err).__name__}: "
                       f"{first_line(err)}{where}", seconds=time.perf_counter() - t0)
    return _record(job, "done", cells=rec["cells"], status=rec["status"],
                   status_probability=rec["status_probability"], seconds=rec["seconds"]["total"])


def _annotate_and_write(job, out_dir, model, device, dtype, batch_size, fingerprint, threads,
                        allow_partial_panel=False) -> dict:
    t0 = time.perf_counter()
    image, mask = read_job(job)
    t_read = time.perf_counter()
    m = load_model(model, device, dtype)
    t_model = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ann = annotate_image(m, image, mask, name=job.name, batch_size=batch_size, threads=threads,
                             allow_partial_panel=allow_partial_panel)
        caught_all = [str(w.message) for w in caught]
    t_pred = time.perf_counter()
    table = ann.table.drop(columns=["image"])
    types = ann.class_id_mask(mask)
    cov = ann.coverage
    partial = (f"partial panel: {len(cov.present)} of {len(cov.present) + len(cov.missing)} model markers; "
               "types less reliable" if cov is not None and not cov.ok else None)
    overlay = render_overlay(image, mask, types, m.type_labels, label_colors(m.type_labels), warning=partial)
    st = ann.image_status
    n_types = {t: int((table["cell_type"] == t).sum()) for t in m.type_labels}
    rec = {
        "image": job.name, "source": job.source, "mask": job.mask_path, "panel": job.panel_path,
        "shape": [int(s) for s in image.shape], "channels": list(image.channels),
        "cells": int(len(table)), "type_counts": n_types, "untyped": int(len(table) - sum(n_types.values())),
        "status": st.get("status"),
        "status_probability": _num(st.get("status_probability")),
        # false: the image's call is too close to chance to report as its status (domain.status_is_confident)
        "status_confident": bool(st.get("status_confident")) if st.get("status") is not None else None,
        "status_probabilities": {lab: _num(st.get(_col("p_status_", lab))) for lab in m.status_labels},
        "markers_used": ann.used_markers, "markers_ignored": ann.unknown_markers, "warnings": caught_all,
        "model_fingerprint": fingerprint, "device": str(m.device),
        "dtype": str(next(m.lm.parameters()).dtype).removeprefix("torch."),
    }
    measure_s = ann.timings.get("measure_s", 0.0)
    rec["seconds"] = {"read": t_read - t0, "measure": measure_s, "model_load": t_model - t_read,
                      "predict": t_pred - t_model - measure_s}
    write_image_files(out_dir, job.name, table, types, overlay)
    t_write = time.perf_counter()
    rec["seconds"].update(write=t_write - t_pred, total=t_write - t0)
    write_done(out_dir, job.name, rec)
    return rec


def _num(v):
    if v is None:
        return None
    v = float(v)
    return None if not np.isfinite(v) else v


# ----------------------------------------------------------------------------------------- the run
@dataclass
class BatchResult:
    out_dir: Path
    kind: str
    records: list[dict]
    run: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[dict]:
        return [r for r in self.records if r["state"] == "error"]

    @property
    def ok(self) -> bool:
        return all(r["state"] in ("done", "skipped") for r in self.records)

    @property
    def cancelled(self) -> bool:
        return len(self.records) < self.run.get("images", {}).get("total", len(self.records))


class _Tally:
    """The records of a run as images finish, and whether the caller wants it to go on."""

    def __init__(self, total: int, progress: BatchProgress | None):
        self.total, self.progress, self.records, self.go_on = total, progress, {}, True
        if progress is not None:
            self.go_on = progress(None, 0, total) is not False

    def add(self, rec: dict) -> bool:
        self.records[rec["image"]] = rec
        if self.progress is not None and self.progress(rec, len(self.records), self.total) is False:
            self.go_on = False
        return self.go_on


def run_batch(
    input_dir: str | Path,
    out_dir: str | Path,
    model: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    workers: int = 0,
    scheduler: str | None = None,
    overwrite: bool = False,
    batch_size: int | None = None,
    progress: BatchProgress | None = None,
    client=None,
    threads: int | None = None,
    allow_partial_panel: bool = False,
) -> BatchResult:
    """Annotate every image of ``input_dir`` into ``out_dir`` (see the package doc).

    ``workers=0`` runs in this process; ``workers=N`` starts a LocalCluster of N single-threaded
    processes; ``scheduler`` connects to an existing cluster (``client`` an existing
    ``distributed.Client``). ``progress(record, done, total)`` is called once with ``record=None``
    before the first image, then as each image finishes; returning False stops the run after the
    current image (finished images are kept, run-level files are still written). ``threads``: batches
    scored at once in an in-process run (default: every available core; Dask workers always use 1); the
    outputs do not depend on it.
    """
    started, t0 = time.time(), time.perf_counter()
    out = Path(out_dir)
    disc = discover(input_dir)
    if out.resolve() == disc.root.resolve():
        raise S2SInputError(out, "the output folder must differ from the input folder")
    meta = model_meta(model)
    check_dtype(dtype)  # before any worker starts
    model_arg = None if model is None else str(Path(model).resolve())
    local = client is None and scheduler is None
    if local:
        resolve_device(device)  # the one device check, before any worker starts
    in_process = local and workers <= 0
    t_discover = time.perf_counter()
    if in_process:  # load once, here, so that a broken model fails the run once rather than every image
        _load_once(model_arg, device, dtype, meta)
    t_model = time.perf_counter()
    # one run per output folder: a second would delete this run's temporary files and mix outputs
    with folder_lock(out):
        n_stale = clean_stale_parts(out)
        kw = dict(out_dir=str(out), model=model_arg, device=device, dtype=dtype, batch_size=batch_size,
                  overwrite=overwrite, fingerprint=meta["fingerprint"], allow_partial_panel=allow_partial_panel)
        tally = _Tally(len(disc.jobs), progress)
        if in_process:
            mode = _run_in_process(disc.jobs, tally, threads, kw)
        else:
            mode = _run_on_dask(disc.jobs, tally, kw, workers, scheduler, client)
        t_annotate = time.perf_counter()
        ordered = [tally.records[j.name] for j in disc.jobs if j.name in tally.records]
        collected = collect_outputs(out, disc.jobs, meta, tally.records)
        timings = {"started": started, "t0": t0, "discover": t_discover, "model": t_model if in_process else None,
                   "annotate": t_annotate, "collect": time.perf_counter()}
        run = _run_record(disc, out, meta, ordered, collected, n_stale, timings,
                          {"device": device, "dtype": dtype, "workers": workers, "scheduler": scheduler,
                           "mode": mode, "overwrite": overwrite, "batch_size": batch_size or PREDICT_BATCH_SIZE,
                           "scoring_threads": 1 if mode != "in-process" else
                           (threads or "auto (every available core)")})
        write_json_atomic(run, out / "run.json")
    return BatchResult(out, disc.kind, ordered, run)


def _load_once(model, device, dtype, meta) -> None:
    try:
        load_model(model, device, dtype)
    except S2SInputError:
        raise
    except Exception as err:
        raise S2SInputError(meta["path"], f"cannot load the model ({first_line(err)})") from None


def _run_in_process(jobs: list[ImageJob], tally: _Tally, threads, kw) -> str:
    for job in jobs:
        if not tally.go_on:
            break
        tally.add(annotate_job(job, torch_threads=threads, **kw))
    return "in-process"


def _run_on_dask(jobs: list[ImageJob], tally: _Tally, kw, workers, scheduler, client) -> str:
    """One task per image on a new LocalCluster, an existing scheduler or a given client."""
    from distributed import Client, LocalCluster, as_completed  # here: only Dask runs need it (0.6 s)

    cluster = own_client = None
    if client is not None:
        mode = "dask client"
    elif scheduler is not None:
        mode = f"dask scheduler {scheduler}"
        client = own_client = Client(scheduler)
    else:
        mode = f"dask LocalCluster ({workers} processes x 1 thread)"
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = own_client = Client(cluster)
    try:
        todo = []
        for job in jobs:  # the skip check is cheap: done images never leave this process
            done = None if kw["overwrite"] else read_done(kw["out_dir"], job.name, kw["fingerprint"])
            if done is not None:
                tally.add(_skipped(job, done))
            else:
                todo.append(job)
        futures = {client.submit(annotate_job, job, pure=False, torch_threads=1, **kw): job for job in todo}
        for fut in as_completed(list(futures)):
            job = futures[fut]
            try:
                rec = fut.result()
            except Exception as err:  # worker died, cluster lost...
                rec = _record(job, "error", file=job.source, reason="task failed on the cluster: "
                              f"{type(err).__name__}: {first_line(err)}")
            if not tally.add(rec):
                client.cancel([f for f in futures if not f.done()])
                break
    finally:
        if own_client is not None:
            own_client.close()
        if cluster is not None:
            cluster.close()
    return mode


def _run_record(disc: Discovery, out: Path, meta: dict, ordered: list[dict], collected: dict, n_stale: int,
                t: dict, settings: dict) -> dict:
    """``run.json``: model, versions, settings, image counts and timings of the run."""
    total = len(disc.jobs)
    done_recs = [r for r in ordered if r["state"] == "done"]
    n_cells = sum(r["cells"] or 0 for r in done_recs)
    wall = t["annotate"] - t["discover"]
    return {
        "command": "s2s annotate",
        "input": str(disc.root.resolve()),
        "input_kind": disc.kind,
        "output": str(out.resolve()),
        "model": meta,
        "settings": settings,
        "versions": versions(),
        "images": {
            "total": total,
            "annotated": len(done_recs),
            "skipped_already_done": sum(r["state"] == "skipped" for r in ordered),
            "failed": sum(r["state"] == "error" for r in ordered),
            "cancelled": total - sum(r["state"] in ("done", "skipped", "error") for r in ordered),
            "cells_in_outputs": collected["cells"],
        },
        "stale_temporary_files_removed": n_stale,
        "timings": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t["started"])),
            "discover_s": round(t["discover"] - t["t0"], 3),
            "model_load_in_process_s": round(t["model"] - t["discover"], 3) if t["model"] is not None else None,
            "annotate_s": round(wall, 3),  # model load (or cluster start-up) to the last image
            "collect_s": round(t["collect"] - t["annotate"], 3),
            "total_s": round(t["collect"] - t["t0"], 3),
            "annotated_cells": n_cells,
            "images_per_minute": round(60 * len(done_recs) / wall, 3) if wall > 0 and done_recs else None,
            "cells_per_second": round(n_cells / wall, 1) if wall > 0 and done_recs else None,
            "per_image_s_sum": round(sum(r["seconds"] or 0 for r in done_recs), 3),
        },
    }
