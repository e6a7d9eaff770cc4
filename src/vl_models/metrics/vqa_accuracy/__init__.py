"""The `vqa_accuracy` evaluate module lives in vqa_accuracy.py (load it with `vl_models.metrics.load`)."""
