"""Checkpoints: strict reading and writing of weight files, hub resolution, HF <-> open_clip key conversion,
building CLIP towers from the published layouts, and exporting trained models in those layouts."""
