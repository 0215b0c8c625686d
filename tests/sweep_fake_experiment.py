"""A stand-in experiment for the sweep tests: appends '<value> <pid>' to --runs_log when it starts, waits while
<--fail_markers>/hold_<value> exists (at most 300 s), then --sleep seconds, and records its flags, pid, thread
setting, SWEEP_TEST_SETUP and times in <results_dir>/value.json; exits with 3 instead while
<--fail_markers>/fail_<value> exists."""
import argparse
import json
import os
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results_dir", type=Path, required=True, help="where value.json goes")
    parser.add_argument("--figures_dir", type=Path, required=True, help="unused: every script takes it")
    parser.add_argument("--value", type=int, default=0, help="the crossed value, recorded")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait before writing")
    parser.add_argument("--fail_markers", type=Path, default=None,
                        help="wait while <this>/hold_<value> exists; exit 3 while <this>/fail_<value> exists")
    parser.add_argument("--runs_log", type=Path, default=None, help="append '<value> <pid>' here when starting")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    start = time.time()
    if args.runs_log is not None:
        with open(args.runs_log, "a") as log:
            log.write(f"{args.value} {os.getpid()}\n")
    if args.fail_markers is not None:
        while (args.fail_markers / f"hold_{args.value}").exists() and time.time() - start < 300:
            time.sleep(0.1)
    time.sleep(args.sleep)
    if args.fail_markers is not None and (args.fail_markers / f"fail_{args.value}").exists():
        print(f"failing on purpose: {args.fail_markers / f'fail_{args.value}'} exists")
        sys.exit(3)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "value.json").write_text(json.dumps({
        "value": args.value, "pid": os.getpid(), "threads": os.environ.get("OMP_NUM_THREADS"),
        "setup": os.environ.get("SWEEP_TEST_SETUP"), "start": start, "end": time.time()}))


if __name__ == "__main__":
    main(parse_args())
