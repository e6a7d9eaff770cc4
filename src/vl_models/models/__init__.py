"""One package per method; importing this registers them all (methods never import each other)."""

from ..registry import register_method
from . import albef, vilta, vl_beit, vlmae, vq_mim

for _method in (albef.METHOD, vlmae.METHOD, vq_mim.METHOD, vilta.METHOD, vl_beit.METHOD):
    register_method(_method)
