"""``disco render``: configuration files (nginx upstreams, HAProxy backends, address lists) that follow a tenant's
live view, consul-template style. :class:`Renderer` is the loop, :mod:`.context` what templates see."""

from services.render.renderer import Renderer, Round
from services.render.spec import SpecError, TemplateSpec, Wait, parse_template, parse_wait
from services.render.template import RenderError, Template

__all__ = [
    "RenderError",
    "Renderer",
    "Round",
    "SpecError",
    "Template",
    "TemplateSpec",
    "Wait",
    "parse_template",
    "parse_wait",
]
