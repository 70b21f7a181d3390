"""Front-end words for the catalog layer's errors (see `assetmgr.wording`)."""
