"""Qt pieces shared by the plugin's widgets."""

from __future__ import annotations

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox, QDockWidget, QFileDialog, QFrame, QHBoxLayout, QLabel, QLineEdit, QProgressBar, QPushButton, QScrollArea,
    QVBoxLayout, QWidget,
)

from spatial2sentence.errors import S2SInputError

try:  # PyQt: sip knows whether Qt deleted a wrapped object
    from qtpy.sip import isdeleted as _isdeleted
except ImportError:  # PySide6
    try:
        from shiboken6 import isValid as _is_valid

        def _isdeleted(obj) -> bool:
            return not _is_valid(obj)
    except ImportError:  # neither: nothing to ask, treat every object as alive
        def _isdeleted(obj) -> bool:
            return False

# Device choices shown in the widgets -> the core's device argument.
DEVICES = {"auto": "auto", "CPU": "cpu", "CUDA": "cuda"}


def notify(kind: str, message: str) -> None:
    """A napari notification: ``kind`` is error, warning or info."""
    {"error": show_error, "warning": show_warning, "info": show_info}[kind](message)


def one_line(err: BaseException, failure: str = "Failed") -> str:
    """The one line a user sees for ``err``: an input error's own message (it names the file and the
    problem), otherwise ``failure`` with the exception type, never a traceback."""
    if isinstance(err, S2SInputError):
        return str(err).splitlines()[0]
    msg = str(err).splitlines()[0] if str(err) else ""
    return f"{failure}: {type(err).__name__}{': ' + msg if msg else ''}"


def is_deleted(obj) -> bool:
    """True once Qt has deleted the C++ side of ``obj`` (a widget of a closed viewer): worker callbacks
    arriving after that must not touch it."""
    return _isdeleted(obj)


def dock_of(widget):
    """The ``QDockWidget`` holding ``widget`` (None when it is not docked)."""
    w = widget.parentWidget()
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def eta_text(done: int, total: int, seconds: float) -> str:
    """``12 / 609 cells, about 3 min 5 s left`` from the time the ``done`` cells took."""
    head = f"{done} / {total} cells"
    if done <= 0 or seconds <= 0 or done >= total:
        return head
    left = seconds / done * (total - done)
    if left < 60:
        return f"{head}, about {left:.0f} s left"
    return f"{head}, about {int(left // 60)} min {int(left % 60)} s left"


def scroll_body(widget: QWidget, margins: int = 6) -> QVBoxLayout:
    """Give ``widget`` one vertical scroll area and return the layout of its content.

    Why: napari stacks plugin docks in one column and the main window grows to the sum of their
    minimum heights (1363 px on a 1200 px screen before this); inside a scroll area a dock's content
    keeps the height it needs (nothing squeezed, nothing overlapping) and scrolls when the dock is
    shorter. Horizontal scrolling is off: the content follows the dock's width."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
    body = QWidget()
    root = QVBoxLayout(body)
    root.setContentsMargins(margins, margins, margins, margins)
    area.setWidget(body)
    outer.addWidget(area)
    widget.scroll_area = area
    return root


def folder_row(edit: QLineEdit, title: str) -> QHBoxLayout:
    """``edit`` with a "Folder…" button beside it that picks a folder (dialog ``title``) into it."""

    def browse():
        folder = QFileDialog.getExistingDirectory(edit, title, edit.text() or "")
        if folder:
            edit.setText(folder)

    row = QHBoxLayout()
    button = QPushButton("Folder…")
    button.clicked.connect(browse)
    row.addWidget(edit)
    row.addWidget(button)
    return row


def fit_width(widget: QWidget, at_least: int) -> None:
    """Minimum width of a :func:`scroll_body` widget: its content's (no horizontal scrolling, so
    nothing may be cut off) plus the vertical scroll bar, and at least ``at_least``."""
    area = widget.scroll_area
    need = area.widget().minimumSizeHint().width() + area.verticalScrollBar().sizeHint().width() + 2
    widget.setMinimumWidth(max(at_least, need))


class RunControls:
    """A Run / Cancel row, a progress bar and a wrapping status line, added to ``root``; ``running(flag)``
    toggles them, ``progress(done, total)`` moves the bar.

    Why our own bar rather than napari's activity-dock progress (``create_worker(_progress=...)``): with
    it, the prediction of 5,351 cells took 9.6 s instead of 5.4 s without a bar, under Xvfb on 2 CPUs
    (``benchmarks/plugin_progress.py``; with this bar 6.9 s). Probably its animated activity indicator
    keeps the window repainting, which costs CPU wherever drawing is not on a GPU (remote desktops, VMs);
    this bar repaints only when it moves.
    """

    def __init__(self, root: QVBoxLayout, on_run, on_cancel):
        row = QHBoxLayout()
        self.run_button = QPushButton("Run")
        self.run_button.setMinimumHeight(28)
        self.run_button.clicked.connect(on_run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(on_cancel)
        row.addWidget(self.run_button, 2)
        row.addWidget(self.cancel_button, 1)
        root.addLayout(row)
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("%v / %m")
        self.progress_bar.setVisible(False)
        root.addWidget(self.progress_bar)
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)

    def running(self, flag: bool) -> None:
        self.run_button.setEnabled(not flag)
        self.cancel_button.setEnabled(flag)
        if flag:  # empty until the first count arrives (a range of 0..0 would animate as "busy")
            self.progress_bar.setRange(0, 1)
            self.progress_bar.setValue(0)
        self.progress_bar.setVisible(flag)

    def progress(self, done: int, total: int) -> None:
        if total > 0:
            if self.progress_bar.maximum() != total:
                self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(min(done, total))

    def start(self, worker, status: str, **slots) -> None:
        """Connect ``slots`` (signal name -> callable, e.g. ``yielded=...``) to a napari worker, show
        ``status``, mark the controls running and start the worker."""
        for signal, slot in slots.items():
            getattr(worker, signal).connect(slot)
        self.running(True)
        self.status_label.setText(status)
        worker.start()

    def launch(self, owner, fn, *args, status: str, **kwargs):
        """A napari worker running ``fn(*args, **kwargs)``, its signals connected to ``owner``'s
        ``_on_yielded``, ``_on_returned``, ``_on_errored``, ``_on_aborted`` and ``_on_finished`` (those it
        has; errors go to ``_on_errored``, not napari's own dialog), started by :meth:`start`."""
        worker = create_worker(fn, *args, _ignore_errors=True, _start_thread=False, **kwargs)
        slots = {sig: getattr(owner, f"_on_{sig}") for sig in ("yielded", "returned", "errored", "aborted", "finished")
                 if hasattr(owner, f"_on_{sig}")}
        self.start(worker, status, **slots)
        return worker


def model_inputs() -> tuple[QLineEdit, QComboBox]:
    """The Model field (empty: the embedded default model) and the Device choice shared by the widgets."""
    model_edit = QLineEdit()
    model_edit.setPlaceholderText("embedded default model")
    model_edit.setToolTip("A spatial2sentence model folder; empty: the embedded default model")
    device_combo = QComboBox()
    device_combo.addItems(list(DEVICES))
    return model_edit, device_combo
