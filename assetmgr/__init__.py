"""assetmgr: a Stable Diffusion model and LoRA manager.

This package must stay cheap to import: `catalog` and `sandbox` import `assetmgr.errors`, and
nothing here may pull in Textual, typer or Rich (only `assetmgr.cli` and `assetmgr.tui` do).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
