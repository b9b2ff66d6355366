"""Cost of the conduct-code rules on the call path, as ratios against the same run's baseline.

1. in-process check_call: conduct rules on (holidays from the rpo.db cache, caller ID checked)
   vs off (calling_hours = off, caller_id_check = off);
2. the process AGI, whole call through the Asterisk peer: on vs off;
3. a fresh interpreter deciding one call: holiday cache hit vs a year the cache lacks
   (the holidays package imported on the call path).
Usage: python bench/bench_conduct.py [N]
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from rpo_guard import config as config_mod
from rpo_guard.guard import check_call
from rpo_guard.harness import Channel, run_process_agi
from rpo_guard.register.schema import open_db
from rpo_guard.register.store import Store
from rpo_guard.sync import import_consents, import_consultation

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROME = ZoneInfo("Europe/Rome")


def setup(root: Path, conduct: str) -> config_mod.Config:
    conf = root / f"{conduct or 'on'}.conf"
    conf.write_text(f"[paths]\ndata_dir = {root / 'data'}\nlog_file = {root / 'f.log'}\n"
                    + (f"[conduct]\n{conduct}" if conduct else ""))
    return config_mod.load(str(conf))


def main():
    root = Path(tempfile.mkdtemp(prefix="rpo-bench-conduct-"))
    on = setup(root, "")
    off = setup(root, "calling_hours = off\ncaller_id_check = off\n")
    open_db(on.register_db).close()
    today = datetime.now(ROME).date()
    (root / "k.csv").write_text("number,status\n" + "".join(f"33312{i:05d},iscritto\n" for i in range(2000)))
    import_consultation(on, root / "k.csv", today, who="bench")
    (root / "c.csv").write_text("number,brand,kind,given_at\n3331200007,B,contract,2024-01-01\n")
    import_consents(on, root / "c.csv", who="bench")
    at = datetime.combine(today + timedelta(days=(2 - today.weekday()) % 7), datetime.min.time(), ROME).replace(hour=11)

    def loop(cfg, **kw):
        store = Store(cfg.register_db)
        t = time.perf_counter()
        for _ in range(N):
            o = check_call(cfg, store, "3331200007", "B", at, **kw)
        dt = (time.perf_counter() - t) / N
        store.close()
        return dt, o.verdict.reason

    loop(on, caller_id="0612340000", callingpres="0")  # warm
    base, r0 = loop(off)
    cond, r1 = loop(on, caller_id="0612340000", callingpres="0")
    print(f"check_call in process ({N} calls): off {base * 1e6:.0f} us ({r0}), on {cond * 1e6:.0f} us ({r1}): "
          f"ratio {cond / base:.2f}")

    agi = str(Path(sys.executable).parent / "rpo-guard-agi")
    def agi_loop(cfg, k=15):
        times = []
        for _ in range(k):
            t = time.perf_counter()
            s = run_process_agi(agi, ["3331200007", "B"], Channel(callerid="0612340000"),
                                env={config_mod.ENV_VAR: str(cfg.path)})
            times.append(time.perf_counter() - t)
        return statistics.median(times), s.reason
    agi_loop(off, 2)
    a_off, ra = agi_loop(off)
    a_on, rb = agi_loop(on)
    print(f"process AGI, median of 15: off {a_off * 1e3:.1f} ms ({ra}), on {a_on * 1e3:.1f} ms ({rb}): "
          f"ratio {a_on / a_off:.2f} (calling hours judged on the real clock; caller ID classified by phonenumbers)")
    from rpo_guard.register.conduct import caller_id_add
    caller_id_add(on, "0612340000", "B", who="bench")
    a_decl, rc = agi_loop(on)
    print(f"process AGI, caller ID declared for the brand (no phonenumbers import): on {a_decl * 1e3:.1f} ms ({rc}): "
          f"ratio {a_decl / a_off:.2f}")

    code = ("import time,sys;t=time.perf_counter();from datetime import datetime;from rpo_guard import config;"
            "from rpo_guard.guard import check_call;from rpo_guard.register.store import Store;"
            f"c=config.load({str(on.path)!r});o=check_call(c,Store(c.register_db),'3331200007','B',"
            "datetime.fromisoformat(sys.argv[1]),caller_id='0612340000',callingpres='0');"
            "print(time.perf_counter()-t,'holidays' in sys.modules,o.verdict.reason)")
    def fresh(when, k=7):
        out = [subprocess.run([sys.executable, "-c", code, when], capture_output=True, text=True, check=True)
               .stdout.split() for _ in range(k)]
        return statistics.median(float(o[0]) for o in out), out[0][1], out[0][2]
    hit = fresh(at.isoformat())  # the caller ID is declared by now: phonenumbers not imported either
    miss = fresh(at.replace(year=today.year + 5).isoformat())
    print(f"fresh interpreter, one call: cache hit {hit[0] * 1e3:.1f} ms (holidays imported: {hit[1]}), "
          f"year outside the cache {miss[0] * 1e3:.1f} ms (holidays imported: {miss[1]}): ratio {miss[0] / hit[0]:.2f}")


if __name__ == "__main__":
    main()
