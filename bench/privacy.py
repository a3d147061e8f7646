"""What the PII policy costs (run by hand, never in CI): decode + map of the simulator's requests under each
policy, in CPU seconds of this process (other load on the machine moves it little), median of ``--repeat``.

    python -m bench.privacy --calls 600

Prints spans/s and log records/s per policy: no policy, the default (``card=mask``), everything masked, everything
hashed. The collector's own figures with a policy: ``CALLSCOPE_PII=mask python -m bench.ingest``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from collector.cost import PriceTable
from collector.otlp.codec import iter_logs, iter_spans, parse_logs, parse_traces
from collector.pipeline import map_logs, map_spans
from collector.privacy import KEEP_ALL, PiiPolicy, parse_policy
from collector.simulate import encode_requests, generate_calls

POLICIES = {
    "none": KEEP_ALL,
    "card=mask (default)": PiiPolicy(parse_policy("")),
    "mask": PiiPolicy(parse_policy("mask")),
    "hash": PiiPolicy(parse_policy("hash"), salt="bench-salt-16chars"),
}


def _rate(items: int, run) -> float:  # type: ignore[no-untyped-def]
    started = time.process_time()
    run()
    return items / max(time.process_time() - started, 1e-9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.privacy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=600, help="simulated calls [600]")
    parser.add_argument("--repeat", type=int, default=5, help="runs per policy; the median is reported [5]")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    traces, logs = encode_requests(generate_calls(args.calls, seed=args.seed), spans_per_request=512)
    trace_requests, log_requests = [parse_traces(b) for b in traces], [parse_logs(b) for b in logs]
    spans = sum(len(ss.spans) for r in trace_requests for rs in r.resource_spans for ss in rs.scope_spans)
    records = sum(len(sl.log_records) for r in log_requests for rl in r.resource_logs for sl in rl.scope_logs)
    prices = PriceTable.load()
    rates: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in POLICIES}
    for _ in range(args.repeat):   # policies interleaved: a change in the machine's load hits them alike
        for name, policy in POLICIES.items():
            rates[name][0].append(_rate(spans, lambda: [map_spans(iter_spans(r), prices=prices, privacy=policy)
                                                        for r in trace_requests]))
            rates[name][1].append(_rate(records, lambda: [map_logs(iter_logs(r), privacy=policy)
                                                          for r in log_requests]))
    results = {}
    for name, (span_rates, log_rates) in rates.items():
        results[name] = {"spans_per_cpu_s": round(statistics.median(span_rates)),
                         "log_records_per_cpu_s": round(statistics.median(log_rates))}
        sys.stderr.write(f"{name:20} {results[name]['spans_per_cpu_s']:>8,} spans/s  "
                         f"{results[name]['log_records_per_cpu_s']:>8,} log records/s\n")
    print(json.dumps({"spans": spans, "log_records": records, "policies": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
