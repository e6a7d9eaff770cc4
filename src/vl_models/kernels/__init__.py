"""Fast paths with a plain PyTorch reference beside each."""

from vl_models.kernels.nearest_code import nearest_code, nearest_code_reference

__all__ = ["nearest_code", "nearest_code_reference"]
