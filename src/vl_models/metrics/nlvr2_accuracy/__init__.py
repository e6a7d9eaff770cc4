"""The `nlvr2_accuracy` evaluate module lives in nlvr2_accuracy.py (load it with `vl_models.metrics.load`)."""
