"""The stages of i2dl, one module each; the CLI (:mod:`i2dl.cli`) is a table of them.

Each Hydra stage module has ``run(cfg) -> result``, working in the run folder
``cfg.paths.output_dir`` (:mod:`i2dl.io.layout`) and logging to ``<run>/logs/<stage>.log``:

* :mod:`~i2dl.stages.prepare`: rasters + reference polygons -> Zarr sample store;
* :mod:`~i2dl.stages.fit`: train the model of ``cfg.model`` on the learn split;
* :mod:`~i2dl.stages.evaluate`: the chosen checkpoint on the val split -> ``report/``;
* :mod:`~i2dl.stages.infer`: chunked classification of the raster(s) -> ``maps/``;
* :mod:`~i2dl.stages.train`: the main job, prepare -> fit -> evaluate -> infer;
* :mod:`~i2dl.stages.features_map`: the feature time series as maps (iota2
  ``i2_features_map``).

:mod:`~i2dl.stages.report` (multi-run aggregation) takes plain arguments, not a config.
"""
