"""What SLURM says of one sweep's jobs: squeue asked about them alone (never other jobs), at most once per
poll, and the states in which SLURM ended a job."""
import shutil
import subprocess
import time
from collections.abc import Iterable

DEFAULT_POLL_S = 30.0
ENDED_BY_SLURM = {"TIMEOUT", "OUT_OF_MEMORY", "CANCELLED", "FAILED", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


class SlurmQueue:
    """What SLURM says of one sweep's jobs: `squeue --jobs <their ids>`, asked at most once per `poll_s` seconds
    and never about other jobs. A job submitted since the last answer counts as pending."""

    def __init__(self, poll_s: float = DEFAULT_POLL_S) -> None:
        self.poll_s = poll_s
        self.asked_at: float | None = None
        self.asked: set[str] = set()                      # base job ids of the last question
        self.listed: dict[str, str] | None = None         # job id -> SLURM state; None: SLURM could not be read
        self.submitted: set[str] = set()                  # base job ids submitted since the last question

    def refresh(self, job_ids: Iterable[str]) -> None:
        """Ask squeue about these jobs, unless it was asked less than poll_s ago or there is nothing to ask."""
        bases = {job.split("_")[0] for job in job_ids}
        if not bases or (self.asked_at is not None and time.monotonic() - self.asked_at < self.poll_s):
            return
        self.asked_at, self.asked, self.submitted = time.monotonic(), bases, set()
        self.listed = ask_squeue(bases)

    def note_submitted(self, job_ids: Iterable[str]) -> None:
        self.submitted |= {job.split("_")[0] for job in job_ids}

    def state(self, job_id: str) -> str | None:
        """The job's SLURM state (PENDING, RUNNING, TIMEOUT, ...), '' once SLURM no longer lists it, None when
        it cannot be told."""
        base = job_id.split("_")[0]
        if base in self.submitted:
            return "PENDING"
        if self.listed is None or base not in self.asked:
            return None
        return self.listed.get(job_id, "")


def ask_squeue(bases: set[str]) -> dict[str, str] | None:
    """squeue's state of every job of these job ids (array tasks one by one), or None if it cannot be read. An
    answer that lists none of them counts only if `scontrol show job` confirms that SLURM no longer knows them."""
    if shutil.which("squeue") is None:
        return None
    ids = ",".join(sorted(bases))
    try:
        answer = subprocess.run(["squeue", "--noheader", "--array", "--states=all", "--format=%i %T", f"--jobs={ids}"],
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    listed = dict(line.split()[:2] for line in answer.stdout.splitlines() if len(line.split()) >= 2)
    if answer.returncode == 0 and listed:
        return listed
    if answer.returncode not in (0, 1) or shutil.which("scontrol") is None:
        return None
    try:
        shown = subprocess.run(["scontrol", "show", "job", min(bases)], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None
    return {} if "Invalid job id" in shown.stdout + shown.stderr else None
