"""The same workload on DBOS (`pip install dbos`), on its SQLite system database."""

from __future__ import annotations

import json
import logging
import statistics
import sys
import tempfile
import time

from dbos import DBOS

STEPS = 100


def main(runs: int) -> dict[str, float]:
    path = f"{tempfile.mkdtemp()}/dbos.sqlite"
    DBOS(config={"name": "bench", "system_database_url": f"sqlite:///{path}",
                 "run_admin_server": False})
    logging.getLogger("dbos").setLevel(logging.WARNING)

    @DBOS.step()
    def noop(i: int) -> int:
        return i

    @DBOS.workflow()
    def hundred() -> float:
        start = time.perf_counter()
        for i in range(STEPS):
            noop(i)
        return (time.perf_counter() - start) * 1000 / STEPS

    DBOS.launch()
    began = time.perf_counter()
    per_step = sorted(hundred() for _ in range(runs))
    elapsed = time.perf_counter() - began
    DBOS.destroy()
    return {"per_step_ms_median": statistics.median(per_step),
            "per_step_ms_p90": per_step[int(len(per_step) * 0.9) - 1],
            "runs_per_s": runs / elapsed}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)))
