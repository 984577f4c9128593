"""Maps: the window engine (local or Dask), fusion, quality, products, zonal stats, previews."""
