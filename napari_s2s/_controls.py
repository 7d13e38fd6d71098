"""Qt pieces shared by the plugin's widgets."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout

from spatial2sentence.errors import S2SInputError

# Device choices shown in the widgets -> the core's device argument.
DEVICES = {"auto": "auto", "CPU": "cpu", "CUDA": "cuda"}


def notify(kind: str, message: str) -> None:
    """A napari notification: ``kind`` is error, warning or info."""
    from napari.utils.notifications import show_error, show_info, show_warning

    {"error": show_error, "warning": show_warning, "info": show_info}[kind](message)


def one_line(err: BaseException, failure: str = "Failed") -> str:
    """The one line a user sees for ``err``: an input error's own message (it names the file and the
    problem), otherwise ``failure`` with the exception type, never a traceback."""
    if isinstance(err, S2SInputError):
        return str(err).splitlines()[0]
    msg = str(err).splitlines()[0] if str(err) else ""
    return f"{failure}: {type(err).__name__}{': ' + msg if msg else ''}"


class RunControls:
    """A Run / Cancel row and a wrapping status line, added to ``root``; ``running(flag)`` toggles them."""

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
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)

    def running(self, flag: bool) -> None:
        self.run_button.setEnabled(not flag)
        self.cancel_button.setEnabled(flag)

    def start(self, worker, status: str, **slots) -> None:
        """Connect ``slots`` (signal name -> callable, e.g. ``yielded=...``) to a napari worker, show
        ``status``, mark the controls running and start the worker."""
        for signal, slot in slots.items():
            getattr(worker, signal).connect(slot)
        self.running(True)
        self.status_label.setText(status)
        worker.start()
