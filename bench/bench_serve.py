"""Load benchmark of ``wbc serve``: N concurrent clients on loopback classifying cells and uploading samples.

    nice -n 19 python bench/bench_serve.py [--clients 32] [--seconds 20] [--upload-share 0.2] [--json out.json]
    python bench/bench_serve.py --url http://127.0.0.1:8000 --token T   # against a server already running

Starts its own ``wbc serve`` (SQLite, a temporary data folder) unless ``--url`` is given. Each client
loops for ``--seconds``: with probability ``--upload-share`` it uploads a one-field sample
(``POST /samples``, analysed in the background), otherwise it classifies one cell image
(``POST /classify``). Reported: requests, throughput, p50/p95/p99 latency per operation and overall,
and the error count (any non-2xx answer or transport error; target 0 at 32 clients). Traffic goes
to loopback only; the run stops by itself (each request times out after ``--timeout`` seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CELL = ROOT / "src" / "wbc" / "assets" / "samples" / "kaggle_eosinophil_7_1440.jpeg"
FIELD = ROOT.parent / "shared" / "data" / "blood-cells" / "dataset-master" / "dataset-master" / "JPEGImages" / \
    "BloodImage_00000.jpg"
API = "/api/v1"


async def client_loop(http: httpx.AsyncClient, until: float, share: float, rng: random.Random, cell: bytes,
                      field: bytes, log: list) -> None:
    while time.monotonic() < until:
        upload = rng.random() < share
        t0 = time.perf_counter()
        try:
            if upload:
                r = await http.post(f"{API}/samples", files=[("files", ("field.jpg", field, "image/jpeg"))],
                                    data={"reference": "bench"})
            else:
                r = await http.post(f"{API}/classify", files=[("files", ("cell.jpg", cell, "image/jpeg"))])
            error = None if r.status_code < 300 else f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}"
        log.append(("upload" if upload else "classify", time.perf_counter() - t0, error))


def percentiles(seconds: list[float]) -> dict:
    if not seconds:
        return {"n": 0}
    ms = np.asarray(seconds) * 1000
    return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(float(ms.max()), 1)}


async def run(url: str, clients: int, seconds: float, share: float, token: str | None, timeout: float, seed: int) -> dict:
    cell = CELL.read_bytes()
    field = FIELD.read_bytes() if FIELD.is_file() else cell
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    log: list = []
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout) as http:
        (await http.get(f"{API}/health")).raise_for_status()
        await http.post(f"{API}/classify", files=[("files", ("cell.jpg", cell, "image/jpeg"))])  # warm-up
        t0 = time.monotonic()
        until = t0 + seconds
        await asyncio.gather(*(client_loop(http, until, share, random.Random(seed + i), cell, field, log)
                               for i in range(clients)))
        wall = time.monotonic() - t0
        queue = (await http.get(f"{API}/health")).json()
    by_op = defaultdict(list)
    for op, dt, err in log:
        by_op[op].append(dt)
    errors = [err for _, _, err in log if err]
    return {
        "url": url, "clients": clients, "seconds": round(wall, 2), "upload_share": share,
        "requests": len(log), "throughput_rps": round(len(log) / wall, 2), "errors": len(errors),
        "error_examples": [f"{n} x {e}" for e, n in Counter(errors).most_common(5)],
        "latency": {"all": percentiles([dt for _, dt, _ in log]), **{op: percentiles(v) for op, v in sorted(by_op.items())}},
        "analysis_queue_after": {k: queue.get(k) for k in ("queued", "analysing")},
    }


def markdown(res: dict) -> str:
    lines = [f"`wbc serve` under load: {res['clients']} clients for {res['seconds']} s on loopback, "
             f"{100 * res['upload_share']:.0f} % uploads — {res['requests']} requests, "
             f"{res['throughput_rps']} req/s, **{res['errors']} errors**", "",
             "| operation | requests | p50 ms | p95 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    for op, p in res["latency"].items():
        if p.get("n"):
            lines.append(f"| {op} | {p['n']} | {p['p50_ms']} | {p['p95_ms']} | {p['p99_ms']} | {p['max_ms']} |")
    if res["error_examples"]:
        lines += ["", "Errors: " + "; ".join(res["error_examples"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    ap.add_argument("--seconds", type=float, default=20, help="how long the clients send requests (default: 20)")
    ap.add_argument("--upload-share", type=float, default=0.2, help="share of requests that upload a sample "
                    "(default: 0.2)")
    ap.add_argument("--timeout", type=float, default=120, help="seconds before one request counts as failed "
                    "(default: 120)")
    ap.add_argument("--url", default=None, help="a running server (default: start one on a free loopback port)")
    ap.add_argument("--token", default=None, help="API token of --url (default: none)")
    ap.add_argument("--seed", type=int, default=0, help="(default: 0)")
    ap.add_argument("--json", default=None, help="also write the results here (default: print only)")
    args = ap.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        ap.error("--url must be a loopback address: this benchmark never sends load elsewhere")
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            res = asyncio.run(run(args.url, args.clients, args.seconds, args.upload_share, args.token, args.timeout,
                                  args.seed))
        else:
            from wbc.service.launcher import ServerProcess
            with ServerProcess(Path(tmp) / "data") as server:
                res = asyncio.run(run(server.url, args.clients, args.seconds, args.upload_share, None, args.timeout,
                                      args.seed))
    res["machine"] = machine_info()
    print(markdown(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
