"""Sample data shipped with napari-s2s (installed as ``napari_s2s.sample_data``); see README.md here."""
