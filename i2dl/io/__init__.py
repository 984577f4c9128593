"""Reading and checking inputs: rasters, sensor products, polygons, tables, nomenclatures.

Nothing here composes features: the feature pipeline built on these readers (gap-filling,
indices, user and external features) is :mod:`i2dl.features`.
"""
