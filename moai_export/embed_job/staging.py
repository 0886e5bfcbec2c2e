"""Staging: the corpus split into its shards before anything is embedded.

Ray Data reads the corpus, gives each row its shard (a hash of its id) and the hash of its
text, groups the rows by shard and writes each group's ids and texts as one staged file. Each
shard can then be embedded and written as one unit, by any worker, in any order: a shard file
appears as soon as its worker finishes it (the job streams), and a rerun after a crash embeds
only the shards not yet written. Staging costs one read of the corpus and no model time.

Duplicate ids always land in one shard, so each group finds its own: the job's whole id check
happens here, without gathering every id on the driver.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..core.errors import MoaiError
from .shards import shard_name, shard_of, text_hashes, write_shard

STAGING_DIR = ".staging"  # under the output; removed once every shard is written
DUPLICATES_SHOWN = 10


def staged_path(out: Path, shard: int, shards: int) -> Path:
    return Path(out) / STAGING_DIR / shard_name(shard, shards)


def stage(dataset, out: Path, shards: int) -> int:
    """Write the corpus `dataset` (id, text) as `shards` staged files under out/.staging; returns
    the row count. Duplicate ids are an error naming them (and nothing stays staged)."""
    staging = Path(out) / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)  # a staging cut short by a crash starts over
    staging.mkdir(parents=True)
    groups = (dataset.map_batches(_AssignShards(shards), batch_format="pyarrow")
              .groupby("shard").map_groups(_write_group, fn_kwargs={"out": str(out), "shards": shards},
                                           batch_format="pyarrow").take_all())
    repeated = [i for group in groups for i in json.loads(group["duplicates"])]
    if repeated:
        shutil.rmtree(staging, ignore_errors=True)
        more = " ..." if len(repeated) > DUPLICATES_SHOWN else ""
        raise MoaiError(f"duplicate ids in the corpus: {', '.join(map(str, repeated[:DUPLICATES_SHOWN]))}{more}; "
                        "every id must be unique (a vector store keys on it)")
    return sum(int(group["rows"]) for group in groups)


def read_staged(out: Path, shard: int, shards: int):
    """The staged rows of one shard (id, text, text_hash); a shard no id hashed to is empty."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = staged_path(out, shard, shards)
    if path.is_file():
        return pq.read_table(path)
    return pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string()),
                     "text_hash": pa.array([], pa.binary(16))})


class _AssignShards:
    """Adds each row's shard and the hash of its text."""

    def __init__(self, shards: int):
        self.shards = shards

    def __call__(self, table):
        import pyarrow as pa

        shard = (shard_of(table.column("id").to_pylist()) % np.uint64(self.shards)).astype(np.int64)
        hashes = pa.array(text_hashes(table.column("text").to_pylist()), pa.binary(16))
        return table.append_column("shard", pa.array(shard)).append_column("text_hash", hashes)


def _write_group(table, *, out: str, shards: int):
    """Stage one shard's rows, sorted by id; returns its row count and its repeated ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    shard = int(table.column("shard")[0].as_py())
    counts = pc.value_counts(table.column("id"))
    repeated = [v.as_py() for v, n in zip(counts.field("values"), counts.field("counts")) if n.as_py() > 1]
    table = table.drop_columns(["shard"]).sort_by("id")
    write_shard(table, staged_path(Path(out), shard, shards))
    return pa.table({"shard": [shard], "rows": [table.num_rows],
                     "duplicates": [json.dumps(repeated[:DUPLICATES_SHOWN])]})
