"""An image whose header reads when the data is read but whose pixels do not (a truncated file) fails
only when its batch is built: under data.on_bad_record=skip that record is dropped from its batch,
counted and logged, and never tried again; under raise the run stops naming it."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import pytest
from PIL import Image

from medr1.data.batches import PromptCollator
from medr1.data.datamodule import SkipBadImages
from medr1.data.records import BadRecordError
from medr1.errors import ConfigError
from medr1.models.checkpoints import resolve_model_path
from medr1.models.loading import load_processor
from tests.helpers.config import compose_config


@pytest.fixture(scope="module")
def processor():
    cfg = compose_config([])
    return load_processor(cfg.model, resolve_model_path(cfg.model, cfg.paths.cache_dir))


def with_truncated_image(record, folder):
    """A copy of `record` whose image file keeps its PNG header and loses its pixels."""
    path = folder / f"{record.id}.png"
    shutil.copy(record.images[0], path)
    path.write_bytes(path.read_bytes()[:60])
    Image.open(path)  # the header reads, as the readers' check at load time does
    return dataclasses.replace(record, images=(str(path),))


def test_skip_drops_the_record_from_its_batch_and_from_every_later_one(
    processor, synthetic_splits, tmp_path, caplog
):
    records = synthetic_splits.test[:4]
    bad = with_truncated_image(records[1], tmp_path)
    batch_records = [records[0], bad, records[2], records[3]]
    collator = SkipBadImages(PromptCollator(processor, "think"), "skip")
    with caplog.at_level(logging.WARNING):
        batch = collator(batch_records)
    assert [r.id for r in batch.records] == [records[0].id, records[2].id, records[3].id]
    assert collator.bad == {bad.id}
    assert f"record {bad.id!r} skipped when its batch was built" in caplog.text and "truncated" in caplog.text
    # the same as a batch built without it, token for token
    plain = PromptCollator(processor, "think")([records[0], records[2], records[3]])
    assert batch.model_inputs["input_ids"].equal(plain.model_inputs["input_ids"])
    assert batch.model_inputs["pixel_values"].equal(plain.model_inputs["pixel_values"])
    # the probe's blank-image collator shares what was dropped; a later batch leaves it out untried
    blank = collator.with_blank_images()
    assert [r.id for r in blank([bad, records[0]]).records] == [records[0].id]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [r.id for r in collator([bad, records[2]]).records] == [records[2].id]
    assert caplog.text == ""  # not decoded (nor logged) a second time


def test_raise_stops_naming_the_record_and_a_batch_of_bad_images_stops_under_skip(
    processor, synthetic_splits, tmp_path
):
    bad = [with_truncated_image(record, tmp_path) for record in synthetic_splits.test[:2]]
    with pytest.raises(BadRecordError) as raised:
        SkipBadImages(PromptCollator(processor, "think"), "raise")([synthetic_splits.test[2], bad[0]])
    assert raised.value.record_id == bad[0].id and "truncated" in str(raised.value)
    with pytest.raises(ConfigError, match="no record of a batch of 2 is usable"):
        SkipBadImages(PromptCollator(processor, "think"), "skip")(bad)
