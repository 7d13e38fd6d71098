"""Spatial2Sentence: cells as sentences of ranked markers, with spatial context, read by a causal LM.

The core library of napari-s2s. No Qt or napari here: the plugin in ``napari_s2s`` calls into it.
"""

__version__ = "0.1.0"
