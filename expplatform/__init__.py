"""expplatform: Bayesian A/B experiments along customer journeys.

Importing the package loads nothing but itself: ``expplatform.client`` (standard
library only) runs inside client apps, which must not pay for Flask, SQLAlchemy,
numpy or scipy. So ``create_app`` (``app.py``) is loaded on first use;
``from expplatform import create_app`` works as ever.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
