"""How the store opens its DuckDB file: the connection and the storage settings it writes with.

Kept apart from the writer (``analytics/write/store.py``) so that tools and benchmarks open a database
exactly as the server does, and the settings' reasons stay next to their values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

#: WAL size that triggers a checkpoint. A checkpoint runs inside the commit that crosses it and
#: blocks every other commit meanwhile (also when another connection triggers it: measured), so its
#: length is the worst latency it adds to exports. DuckDB 1.5 logs every LIST or MAP column of an
#: insert at full vector capacity (~32 KB per string child), so each commit adds ~200 KB of WAL
#: whatever its size: at half load 8 MB is a checkpoint every second or so, of ~0.1 s.
CHECKPOINT_THRESHOLD = "8MB"
#: rows per row group (DuckDB's default: 122,880). Each checkpoint recompresses what was appended
#: to a table's last row group since the previous one; at the default that part grows to most of
#: a row group and checkpoints to 0.5 s under load (p99 export latency 520 ms at half load in
#: bench/ingest.py); at 8,192 rows they stay near 0.1 s (p99 166 ms). The price, measured: the
#: same data takes 1.3x (bench/ingest.py) to 1.7x (a replay of the writer's batches) the disk.
ROW_GROUP_SIZE = 8_192
#: compression DuckDB may not choose. A checkpoint analyses every string column of what it writes
#: for FSST, the costliest candidate, and our strings are mostly random hex ids (trace, span and
#: instance ids) that FSST barely shrinks. Without it a checkpoint of 7,000 appended transitions
#: takes 10.8 ms instead of 19.5 (file +28% for that table), and bench/ingest.py's p99 at half
#: load went from 157-265 ms (five runs) to 98-180 ms (six), 260 -> 189-200 ms on a 10M-transition
#: database, same throughput; the database after the run is 5-10% larger. (DuckDB 2.x strings go
#: to DICT_FSST, which this does not name; 2.x checkpoints measured cheap enough as they are.)
DISABLED_COMPRESSION = "fsst"


def connect(path: str) -> Any:
    """A connection whose default catalog is the database file, attached with ROW_GROUP_SIZE
    (and DuckDB told not to use DISABLED_COMPRESSION when it writes).

    ``duckdb.connect(path)`` cannot set the row group size; ATTACH can. The alias is the one
    ``duckdb.connect`` would infer (the file's stem), so qualified names keep working — or
    ``coordstate`` when the stem is not a plain identifier or names a built-in catalog. Spills go
    where they went before (``<path>.tmp``), not to the working directory.
    """
    alias = Path(path).stem
    if not alias.isidentifier() or alias.lower() in {"memory", "system", "temp", "main"}:
        alias = "coordstate"
    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = '{_sql_string(path + '.tmp')}'")
        con.execute(f"SET disabled_compression_methods = '{DISABLED_COMPRESSION}'")
        con.execute(f"ATTACH '{_sql_string(path)}' AS \"{alias}\" (ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        con.execute(f'USE "{alias}"')
    except BaseException:
        con.close()
        raise
    return con


def _sql_string(text: str) -> str:
    return text.replace("'", "''")
