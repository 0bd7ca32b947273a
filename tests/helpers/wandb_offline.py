"""Read the metrics of an offline W&B run back without a server: `read_history(run_dir)`.

An offline run is a `run-<id>.wandb` file: a 7-byte header (":W&B", magic, version) then LevelDB
log records (32 KiB blocks; each record chunk = crc32 (4) + length (2, little endian) + type (1:
full, 2: first, 3: middle, 4: last)) holding protobuf `Record`s. History records carry one logged
row each, as JSON-encoded values.
"""

from __future__ import annotations

import json
import logging
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def run_file(path: str | Path) -> Path:
    """The .wandb file of a run: the file itself, or the newest under a run/wandb folder."""
    path = Path(path)
    if path.is_file():
        return path
    files = sorted(path.rglob("run-*.wandb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(
            f"no run-*.wandb file under {path}; is it a W&B run folder (wandb/offline-run-...)?"
        )
    return files[-1]


def _records(data: bytes):
    """Payloads of the LevelDB log records in `data` (header already skipped at offset HEADER)."""
    position, pending = HEADER, b""
    while position + 7 <= len(data):
        room = BLOCK - position % BLOCK
        if room < 7:  # block trailer: padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if position + 7 + length > len(data):  # the writer is still writing this record
            return
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            position += BLOCK - position % BLOCK if position % BLOCK else 0


def _parsed_records(path: str | Path):
    from wandb.proto import wandb_internal_pb2

    data = run_file(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path} is not a W&B run file (no :W&B header)")
    for payload in _records(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_history(path: str | Path, wait: float = 30.0) -> list[dict]:
    """Every logged history row of the run, as {key: value} dicts in logging order.

    `run.finish()` can return before W&B's writer process has flushed the file, so this waits up
    to `wait` seconds for the run's exit record; a run that never finished (crashed) is read as it
    stands, with a warning."""
    deadline = time.monotonic() + wait
    while True:
        records = list(_parsed_records(path))
        finished = any(record.WhichOneof("record_type") == "exit" for record in records)
        if finished or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if not finished:
        log.warning(
            "%s has no exit record after %.0f s: the run crashed or is still running; "
            "reading the rows written so far",
            run_file(path),
            wait,
        )
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            rows.append(row)
    return rows


def read_run(path: str | Path) -> dict:
    """The run's identity as written: {"group", "tags", "project", "name"}."""
    for record in _parsed_records(path):
        if record.WhichOneof("record_type") == "run":
            run = record.run
            return {
                "group": run.run_group,
                "tags": list(run.tags),
                "project": run.project,
                "name": run.display_name,
            }
    raise ValueError(f"{path}: no run record")
