#!/usr/bin/env python3
"""Checks a Prometheus scrape (on standard input) as the deploy test sees it: parsed by
the Prometheus Python client's own parser, then each CHECK must hold.

    curl -s http://HOST:PORT/metrics | metrics_check.py [--name WHAT] CHECK...
    curl -s http://HOST:PORT/metrics | metrics_check.py --value SERIES

CHECK is SERIES OP NUMBER, e.g. 'aether_master_nodes{state="alive"} == 3', where SERIES is
a sample name with optional labels (the sum of every sample that has them) and OP one of
== != >= <= > <. A series with no sample at all fails every check: the checks are also
that the series are there. --value prints a series' sum instead. Exits 1 on a failure.
"""

import re
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("metrics_check: needs the Prometheus Python client (pip install prometheus-client)", file=sys.stderr)
    sys.exit(2)

SERIES = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
CHECK = re.compile(r"^(.*?)\s*(==|!=|>=|<=|>|<)\s*(\S+)\s*$")
LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"([^"]*)"\s*,?')
OPS = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def series(text):
    match = SERIES.match(text)
    if not match:
        sys.exit(f"metrics_check: cannot read the series {text!r}")
    labels = dict(LABEL.findall(match.group(2) or ""))
    return match.group(1), labels


def total(samples, name, labels):
    """The sum of the matching samples, or None when there is none."""
    values = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(values) if values else None


def main():
    args = sys.argv[1:]
    what = "scrape"
    if len(args) >= 2 and args[0] == "--name":
        what, args = args[1], args[2:]
    samples = [s for family in text_string_to_metric_families(sys.stdin.read()) for s in family.samples]
    if len(args) == 2 and args[0] == "--value":
        value = total(samples, *series(args[1]))
        if value is None:
            sys.exit(f"metrics_check: {what}: no sample of {args[1]}")
        print(int(value) if float(value).is_integer() else value)
        return
    failed = 0
    for check in args:
        match = CHECK.match(check)
        if not match:
            sys.exit(f"metrics_check: cannot read the check {check!r}")
        name, labels = series(match.group(1))
        value = total(samples, name, labels)
        if value is None:
            print(f"metrics_check: {what}: {match.group(1)} is missing", file=sys.stderr)
            failed += 1
        elif not OPS[match.group(2)](value, float(match.group(3))):
            print(f"metrics_check: {what}: {check} does not hold: it is {value:g}", file=sys.stderr)
            failed += 1
    print(f"{what}: {len(samples)} samples parsed, {len(args) - failed} of {len(args)} checks hold", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
