"""Front-end words for the sandbox layer's errors (see `assetmgr.wording`)."""
