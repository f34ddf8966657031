"""fovea: train, profile and audit foveated video vision-language models.

Public API::

    import fovea
    config = fovea.load_config("configs/quickstart.toml", overrides=["training.max_steps=10"])
    model = fovea.build_model(config)   # the two-pass model; model.encoder follows the encoder contract

and ``@fovea.hookimpl`` for plugins (README, "Writing a plugin").
"""

from fovea.core.config import FoveaConfig, load_config
from fovea.core.errors import FoveaError
from fovea.core.hookspecs import hookimpl

__version__ = "0.1.0"
__all__ = ["FoveaConfig", "FoveaError", "build_model", "hookimpl", "load_config", "__version__"]


def build_model(config: FoveaConfig):
    """The two-pass foveated model (``fovea.core.model.FoveatedVLM``) that ``config`` describes."""
    from fovea.core.model import build_model as _build_model

    return _build_model(config)
