"""napari-s2s: the napari plugin of Spatial2Sentence (widgets, reader, sample data).

The plugin stays thin: everything it computes comes from the core library ``spatial2sentence``.
"""

__version__ = "0.1.0"
