"""What messages between runs cost (fm.send / fm.recv / set_event /
get_event), in this process on a fresh history opened with Store (the same
code a kernel runs).

    python bench/messages.py [--n 300] [--rounds 3]

Rows: a send from outside a flow (a cell's fm.send: one DuckDB commit);
a send inside a flow (that commit plus the journaled position); a recv of a
message already queued (2n queued: the lookup must not grow with them); and
the round trip cell -> fm.send -> a flow's fm.recv -> fm.set_event -> the
cell's get_event seeing it. No targets yet: it prints the table and exits 0.
Results go in docs/bench-flows.md by hand.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def one_round(n: int) -> dict[str, float]:
    import fm_kernel as fm
    from fm_kernel import flows
    from fm_kernel.record import trust
    from fm_kernel.record.store import Store

    store = Store.open(Path(tempfile.mkdtemp()) / "history.duckdb")
    trust.trust(store)  # recv may unpickle; a history opened by Store alone has no origin
    flows.configure(store, base_url="http://127.0.0.1:0")

    @fm.flow
    def sink(k: int) -> float:
        fm.wait_for("go", timeout=600)
        t0 = time.perf_counter()
        for _ in range(k):
            fm.recv("t", timeout=60)
        return time.perf_counter() - t0

    @fm.flow
    def source(target: str, k: int) -> float:
        t0 = time.perf_counter()
        for i in range(k):
            fm.send(target, "t", {"i": i})
        return time.perf_counter() - t0

    @fm.flow
    def echo(k: int) -> None:
        for _ in range(k):
            fm.set_event("a", fm.recv("q", timeout=60))

    r = sink.start(2 * n)
    t0 = time.perf_counter()
    for i in range(n):
        fm.send(r.id, "t", {"i": i})
    out = {"send from a cell (ms)": (time.perf_counter() - t0) / n * 1000}
    out["send inside a flow (ms)"] = source.start(r.id, n).result(600) / n * 1000
    r.signal("go")
    out[f"recv, {2 * n} queued (ms)"] = r.result(600) / (2 * n) * 1000
    e, trips = echo.start(100), []
    for i in range(100):
        t0 = time.perf_counter()
        fm.send(e.id, "q", i)
        while e.get_event("a", timeout=5) != i:
            time.sleep(0.001)
        trips.append(time.perf_counter() - t0)
    out["round trip, median (ms)"] = statistics.median(trips) * 1000
    flows.registry().close()
    store.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rounds = [one_round(args.n) for _ in range(args.rounds)]
    print(f"load average {os.getloadavg()[0]:.2f}; n = {args.n}; medians of {args.rounds} rounds")
    for key in rounds[0]:
        vals = [r[key] for r in rounds]
        print(f"{key:32} {statistics.median(vals):8.2f}   rounds: "
              + " / ".join(f"{v:.2f}" for v in vals))


if __name__ == "__main__":
    main()
