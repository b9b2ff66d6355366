"""Turn a single box into a fleet: copy its register into an empty centre, ids kept,
as ONE change of the change log (every replica then receives it like any import)."""
from __future__ import annotations

import sqlite3
from urllib.parse import quote

from .central import TABLES, close_change, open_change, writer
from .schema import CentralError


def seed(cfg) -> str:
    src = sqlite3.connect(f"file:{quote(cfg.register_db)}?mode=ro", uri=True)
    counts = {}
    try:
        with writer(cfg) as pg, pg.transaction():
            seq = open_change(pg, "seed", cfg.box_name)
            if pg.execute("SELECT (SELECT count(*) FROM batches) + (SELECT count(*) FROM dnc)"
                          " + (SELECT count(*) FROM consents) + (SELECT count(*) FROM caller_ids)"
                          " + (SELECT count(*) FROM silent_calls)").fetchone()[0]:
                raise CentralError("the centre already holds data: seed only an empty centre")
            for table, cols in TABLES.items():
                cur = src.execute(f"SELECT {', '.join(cols)} FROM {table} WHERE id > 0 ORDER BY id")
                n = 0
                with pg.cursor().copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:
                    for row in cur:
                        copy.write_row(row)
                        n += 1
                counts[table] = n
                pg.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                           f" greatest((SELECT max(id) FROM {table}), 1))")
            n = 0
            with pg.cursor().copy("COPY consultations (batch_id, number, registered, registration_date)"
                                  " FROM STDIN") as copy:
                for row in src.execute("SELECT batch_id, number, registered, registration_date FROM consultations"):
                    copy.write_row(row)
                    n += 1
            counts["consultations"] = n
            close_change(pg, seq, "seed", cfg.box_name, f"seeded from {cfg.register_db}", sum(counts.values()))
    finally:
        src.close()
    return "seeded the centre from " + cfg.register_db + ": " + ", ".join(f"{k} {v}" for k, v in counts.items())
