"""Front-end words for the app layer's errors (see `assetmgr.wording`)."""
