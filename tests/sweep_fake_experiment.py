"""A stand-in experiment for the sweep tests: records its flags, pid, thread setting and times in
<results_dir>/value.json, after --sleep seconds; exits with 3 instead while <--fail_markers>/fail_<value> exists."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--results_dir", type=Path, required=True, help="where value.json goes")
parser.add_argument("--figures_dir", type=Path, required=True, help="unused: every script takes it")
parser.add_argument("--value", type=int, default=0, help="the crossed value, recorded")
parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait before writing")
parser.add_argument("--fail_markers", type=Path, default=None, help="exit 3 while <this>/fail_<value> exists")
args = parser.parse_args()
start = time.time()
time.sleep(args.sleep)
marker = None if args.fail_markers is None else args.fail_markers / f"fail_{args.value}"
if marker is not None and marker.exists():
    print(f"failing on purpose: {marker} exists")
    sys.exit(3)
args.results_dir.mkdir(parents=True, exist_ok=True)
(args.results_dir / "value.json").write_text(json.dumps({
    "value": args.value, "pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS"), "start": start,
    "end": time.time()}))
