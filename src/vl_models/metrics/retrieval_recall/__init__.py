"""The `retrieval_recall` evaluate module lives in retrieval_recall.py (load it with `vl_models.metrics.load`)."""
