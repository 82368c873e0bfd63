"""Camera datasets, codecs, patch shards and loaders.

Data flows files -> shards -> torch batches:

- :mod:`~mdfr.data.synthetic` (with :mod:`~mdfr.data.camera`, :mod:`~mdfr.data.scenes`):
  the offline synthetic camera dataset, written in VISION's layout;
- :mod:`~mdfr.data.vision`: reads that layout (label = camera model);
- :mod:`~mdfr.data.codecs`: the compression attack (``jpeg:``, ``learned:``, ...);
- :mod:`~mdfr.data.patches`: ``prepare`` -> paired patch shards (with
  :mod:`~mdfr.data.selection`, :mod:`~mdfr.data.splits`, :mod:`~mdfr.data.shards`,
  :mod:`~mdfr.data.manifest`);
- :mod:`~mdfr.data.spectra`: the amplitude-increment template and the paper's Fig. 2;
- :mod:`~mdfr.data.loader`: ``PatchDataset`` / ``make_loader`` over memory-mapped shards.

Submodules are imported on use, so ``import mdfr.data`` stays cheap.
"""
