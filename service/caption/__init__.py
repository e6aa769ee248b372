"""Image captions: the deterministic grounded captioner."""

from service.caption.grounded import grounded_caption
from service.domain.records import Caption

__all__ = ["Caption", "grounded_caption"]
