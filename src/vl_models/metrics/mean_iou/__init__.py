"""The `mean_iou` evaluate module lives in mean_iou.py (load it with `vl_models.metrics.load`)."""
