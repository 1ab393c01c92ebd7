"""What one label job did, summed from the per-chunk rows the replicas return."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

# The job prints this marker and the summary as JSON on one line; the Airflow operator reads it back.
SUMMARY_MARKER = "SAFEGUARD_LABEL_JOB_SUMMARY"


@dataclass
class LabelJobSummary:
    run_id: str
    chunks_pending: int = 0  # pending when the job started
    chunks_labelled: int = 0
    chunks_skipped: int = 0  # staged meanwhile (by a retried task or another job)
    items: int = 0
    verdicts: int = 0
    errors: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0  # of prompt_tokens, served from the replicas' prefix caches
    completion_tokens: int = 0
    replicas: int = 0
    replica_pids: list[int] = field(default_factory=list)
    engine_load_s: float = 0.0  # slowest replica start-up
    label_s: float = 0.0  # wall time from the first finished chunk's start to the last chunk's end
    wall_s: float = 0.0  # the whole job, Ray start-up included
    chunks_left: int = 0  # still pending at the end (0 for a complete run)
    first_start: float = 0.0  # epoch seconds
    last_finish: float = 0.0
    # With ray.policy_affinity: each replica (pid, as a string) and the policies it labelled.
    policy_shares: dict[str, list[str]] = field(default_factory=dict)
    cascade: dict[str, Any] = field(default_factory=dict)  # per policy version: decided, calls avoided, audit (cascade_stage.finish)

    def add_row(self, row: dict[str, Any]) -> None:
        if row["skipped"]:
            self.chunks_skipped += 1
        else:
            self.chunks_labelled += 1
        for key in ("items", "verdicts", "errors", "requests", "prompt_tokens", "cached_prompt_tokens",
                    "completion_tokens"):
            setattr(self, key, getattr(self, key) + int(row.get(key) or 0))
        stages = json.loads(row.get("stages") or "[]") or [{"pid": int(row["pid"])}]
        for stage in stages:
            if int(stage["pid"]) not in self.replica_pids:
                self.replica_pids.append(int(stage["pid"]))
            if len(stages) > 1:
                self.policy_shares[str(stage["pid"])] = sorted(stage["policies"])
        self.engine_load_s = max(self.engine_load_s, float(row["engine_load_s"]))
        if not row["skipped"]:
            started, finished = float(row["started"]), float(row["finished"])
            self.first_start = min(self.first_start, started) if self.first_start else started
            self.last_finish = max(self.last_finish, finished)
            self.label_s = self.last_finish - self.first_start

    def add_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self.add_row(row)

    @property
    def items_per_s(self) -> float:
        return self.items / self.label_s if self.label_s else 0.0

    @property
    def tokens_per_item(self) -> float:
        return (self.prompt_tokens + self.completion_tokens) / self.items if self.items else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "items_per_s": round(self.items_per_s, 3), "tokens_per_item": round(self.tokens_per_item, 1)}

    def marker_line(self) -> str:
        return f"{SUMMARY_MARKER} {json.dumps(self.to_dict(), sort_keys=True)}"

    def format(self) -> str:
        return "\n".join([*self._lines(), *(
            f"  cascade {key}: decided {f['decided']} of {f['items']} pairs, {f['calls_avoided']} model calls avoided, "
            f"audit {f['audit_agree']}/{f['audited']} agree, stage {f['cascade_s']:.1f}s vs model {f['model_s']:.1f}s"
            + (" (switched off by its audit)" if f.get("chunks_off") else "")
            for key, f in sorted(self.cascade.items()))])

    def _lines(self) -> list[str]:
        return [
            f"label job for run {self.run_id}:",
            f"  chunks  {self.chunks_labelled} labelled, {self.chunks_skipped} already staged, "
            f"{self.chunks_left} left (of {self.chunks_pending} pending at start)",
            f"  items   {self.items} -> {self.verdicts} verdicts, {self.errors} errors",
            f"  tokens  {self.prompt_tokens} prompt ({self.cached_prompt_tokens} from the prefix cache) + "
            f"{self.completion_tokens} completion ({self.tokens_per_item:.0f} per item)",
            *(f"  replica {pid} labels {', '.join(names)}" for pid, names in sorted(self.policy_shares.items())),
            f"  speed   {self.items_per_s:.2f} items/s over {self.label_s:.1f}s of labelling "
            f"({self.replicas} replicas, engine start-up {self.engine_load_s:.1f}s, wall {self.wall_s:.1f}s)",
        ]


def parse_marker(log_text: str) -> dict[str, Any] | None:
    """The last summary a job printed, or None."""
    for line in reversed(log_text.splitlines()):
        idx = line.find(SUMMARY_MARKER + " ")
        if idx >= 0:
            try:
                return json.loads(line[idx + len(SUMMARY_MARKER) + 1:])
            except ValueError:
                return None
    return None
