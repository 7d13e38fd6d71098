"""Finding an IMC image (its channel layers), its mask and marker names in napari's layer list: shared by
the Annotate cells and Train model widgets (a mixin over a widget with ``viewer``; :meth:`LayerInputs.
layer_rows` adds its ``image_combo``, ``mask_combo`` and ``markers_edit``)."""

from __future__ import annotations

import re

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QComboBox, QFormLayout, QLineEdit

from spatial2sentence.errors import S2SInputError

_SUFFIX = re.compile(r"\s*\[[^\]]*\]$")


def meta(layer) -> dict:
    """The plugin's metadata of a layer (``layer.metadata['s2s']``)."""
    m = getattr(layer, "metadata", None) or {}
    return m.get("s2s", {}) if isinstance(m.get("s2s", {}), dict) else {}


def _rename(layer, image: str) -> None:
    m = dict(layer.metadata)
    m["s2s"] = {**meta(layer), "image": image}
    layer.metadata = m


def separate_copies(layers) -> None:
    """Give every copy of an image opened twice (the same sample opened again) its own image name.

    The reader names an image's layers by file (``E34``); opened twice, the two copies' 10 channel
    layers used to form one 10-channel image whose marker names repeat. In layer order, a channel layer
    whose image already has a layer of the same channel index starts (or joins) the copy ``E34 (2)``,
    ``E34 (3)``...; the k-th mask of ``E34`` goes with the k-th copy. Layers the widget derived from a
    run (class ids, confidence...) are left alone."""
    taken: dict[str, list[set]] = {}  # image -> channel indices of each copy
    masks: dict[str, int] = {}
    for layer in layers:
        m = meta(layer)
        role, image = m.get("role"), m.get("image")
        if image is None or role not in ("channel", "mask"):
            continue
        base = m.get("copy_of", image)
        if role == "channel":
            copies = taken.setdefault(base, [])
            idx = m.get("index", 0)
            k = next((k for k, got in enumerate(copies) if idx not in got), len(copies))
            if k == len(copies):
                copies.append(set())
            copies[k].add(idx)
        else:
            k = masks.get(base, 0)
            masks[base] = k + 1
        want = base if k == 0 else f"{base} ({k + 1})"
        if image != want:
            _rename(layer, want)
            lm = dict(layer.metadata)
            lm["s2s"] = {**lm["s2s"], "copy_of": base}
            layer.metadata = lm


class LayerInputs:
    def layer_rows(self, form: QFormLayout, markers_tip: str) -> None:
        """The Image, Mask and Markers rows of ``form`` (``markers_tip``: the Markers field's tooltip)."""
        self.image_combo = QComboBox()
        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.mask_combo = QComboBox()
        self.markers_edit = QLineEdit()
        self.markers_edit.setToolTip(markers_tip)
        form.addRow("Image", self.image_combo)
        form.addRow("Mask", self.mask_combo)
        form.addRow("Markers", self.markers_edit)

    def image_groups(self) -> dict[str, list]:
        """{display name: [channel layers in order]} for every image found in the layer list."""
        separate_copies(list(self.viewer.layers))
        groups: dict[str, list] = {}
        loose: dict[tuple, list] = {}
        for layer in self.viewer.layers:
            if not isinstance(layer, Image) or layer.rgb:
                continue
            m = meta(layer)
            if m.get("role") == "channel":
                groups.setdefault(m.get("image", "image"), []).append(layer)
            elif m.get("role"):
                continue
            elif layer.ndim == 3:
                groups[f"{layer.name} ({layer.data.shape[0]} channels)"] = [layer]
            elif layer.ndim == 2:
                loose.setdefault(tuple(layer.data.shape), []).append(layer)
        for k in groups:
            groups[k].sort(key=lambda lay: meta(lay).get("index", 0))
        for shape, layers in loose.items():
            groups[f"{len(layers)} layers of {shape[0]} x {shape[1]} px"] = layers
        return groups

    def mask_layers(self) -> list:
        return [lay for lay in self.viewer.layers if isinstance(lay, Labels)
                and meta(lay).get("role", "mask") == "mask"]

    def _marker_edits(self) -> dict[str, str]:
        """{image: the Markers text the user typed for it}: kept over layer-list refreshes (a run adds
        layers, which refreshes the boxes; the names typed must not revert to the layer names)."""
        edits = getattr(self, "_typed_markers", None)
        if edits is None:
            edits = self._typed_markers = {}
            self.markers_edit.textEdited.connect(
                lambda text: edits.__setitem__(self.image_combo.currentText(), text))
        return edits

    def _refresh_layers(self, event=None):
        self._marker_edits()
        self._groups = self.image_groups()
        cur = self.image_combo.currentText()
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(list(self._groups))
        if cur in self._groups:
            self.image_combo.setCurrentText(cur)
        self.image_combo.blockSignals(False)
        curm = self.mask_combo.currentText()
        self.mask_combo.clear()
        self.mask_combo.addItems([lay.name for lay in self.mask_layers()])
        if curm in [lay.name for lay in self.mask_layers()]:
            self.mask_combo.setCurrentText(curm)
        self._on_image_changed(keep_mask=bool(curm))

    def _on_image_changed(self, *_, keep_mask: bool = False):
        name = self.image_combo.currentText()
        layers = self._groups.get(name, [])
        typed = self._marker_edits().get(name)
        self.markers_edit.setText(typed if typed is not None else ", ".join(self.marker_names(layers)))
        self.markers_edit.setCursorPosition(0)  # the first names in view, not the end of a long panel
        if layers and not keep_mask:
            image = meta(layers[0]).get("image")
            shape = tuple(layers[0].data.shape[-2:])
            masks = self.mask_layers()
            best = [m for m in masks if image and meta(m).get("image") == image] or \
                   [m for m in masks if tuple(m.data.shape) == shape]
            if best:
                self.mask_combo.setCurrentText(best[0].name)

    @staticmethod
    def marker_names(layers) -> list[str]:
        if len(layers) == 1 and layers[0].ndim == 3:
            m = meta(layers[0]).get("channels") or layers[0].metadata.get("channel_names")
            n = layers[0].data.shape[0]
            return list(m) if m and len(m) == n else [f"ch{i}" for i in range(n)]
        return [meta(lay).get("channel") or _SUFFIX.sub("", lay.name) for lay in layers]

    def current_inputs(self):
        """(image name, data C x Y x X, marker names, mask layer, pixel size); raises S2SInputError."""
        name = self.image_combo.currentText()
        layers = self._groups.get(name)
        if not layers:
            raise S2SInputError(None, "no image: open an IMC image (its channels become image layers)")
        mask_layer = next((m for m in self.mask_layers() if m.name == self.mask_combo.currentText()), None)
        if mask_layer is None:
            raise S2SInputError(name, "no mask: add a Labels layer with the cell segmentation")
        if len(layers) == 1 and layers[0].ndim == 3:
            data = np.asarray(layers[0].data)
        else:
            shapes = {tuple(lay.data.shape) for lay in layers}
            if len(shapes) > 1:
                raise S2SInputError(name, f"channel layers differ in shape: {sorted(shapes)}")
            data = np.stack([np.asarray(lay.data) for lay in layers])
        markers = [m.strip() for m in self.markers_edit.text().split(",") if m.strip()]
        image = meta(layers[0]).get("image") or name
        ps = float(meta(layers[0]).get("pixel_size_um") or layers[0].scale[-1] or 1.0)
        mask = np.asarray(mask_layer.data)
        if mask.shape != data.shape[1:]:
            raise S2SInputError(mask_layer.name, f"mask shape {mask.shape} differs from the image's "
                                                 f"{data.shape[1:]} ({name})")
        return image, data, markers, mask_layer, ps

