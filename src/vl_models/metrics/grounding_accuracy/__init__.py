"""The `grounding_accuracy` evaluate module lives in grounding_accuracy.py (load it with `vl_models.metrics.load`)."""
