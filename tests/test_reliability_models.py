"""Reliability at the model and loader boundaries (docs/reliability.md, issue 18 item 6): a RefCOCO refs pickle that
would run code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from fixtures_data import refcoco_dataset
from vl_models.data.readers_grounding import read_refcoco

# -- item 6: a refs pickle that would run code ----------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def test_a_refs_pickle_that_runs_code_is_refused_before_it_runs(tmp_path):
    _, instances, images, refs = refcoco_dataset(tmp_path)
    refs[0].update(sent_ids=[0, 1], score=0.5, file_name="COCO_train2014_000000000001_11.jpg")  # as refs(unc).p
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([_RunsCode(marker)] + refs))
    with pytest.raises(ValueError, match=r"evil\.p: not a readable refs pickle.*system"):
        read_refcoco(evil, instances, images)
    assert not marker.exists()
    # the official file (Python 2's protocols 0 and 2 too): lists, dicts, str, int, float only
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        good = tmp_path / f"refs{protocol}.p"
        good.write_bytes(pickle.dumps(refs, protocol=protocol))
        ds = read_refcoco(good, instances, images)
        assert ds["ref_id"] == [0, 0, 1] and ds["expression"][1] == "the astronaut"
