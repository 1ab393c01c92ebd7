"""The Ray Data pipeline: pending chunk numbers -> N replicas (one engine each) -> per-chunk results.

With ray.policy_affinity the replicas form one stage per share of the run's policies (stage_plan):
a chunk passes the stages in turn, each labels its share's policies and hands its verdicts on with
the chunk number, and the last stage stages the whole chunk. Stages run at once on different chunks.

Why a `map_batches` actor holding our own engine rather than `ray.data.llm.build_processor`: the
engine already owns prompt rendering (chat template or harmony), structured outputs per policy and
output parsing, so the Ray path labels exactly like the in-process path; and it starts lighter (no
separate tokenize / chat-template / detokenize stages; measured figures are in bench/ray_job_bench.py
and the project notes). Rows are chunk numbers, not texts: each replica reads its own chunk and
stages its verdicts itself, so nothing big passes through the driver and a finished chunk is durable
the moment its replica commits it.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Callable, Iterator, Sequence

from safeguard_flow.domain.policies import Policy
from safeguard_flow.raylib.batch import cascade_stage
from safeguard_flow.raylib.batch.replica import ChunkLabeller
from safeguard_flow.settings import Settings


def replica_resources(settings: Settings, cuda: bool | None = None) -> dict[str, Any]:
    """Ray resources of one replica: its CPUs, custom resources, and on CUDA one GPU or a TP group.

    On CUDA each replica takes max(ray.num_gpus_per_replica, model.tensor_parallel_size) GPUs: a
    tensor-parallel engine needs one GPU per rank, and 0 would start vLLM with no GPU at all, so
    it is refused. `cuda`: None asks the connected cluster whether it has GPUs.
    """
    from safeguard_flow.settings import SettingsError

    ray_settings = settings.ray
    if cuda is None:
        cuda = _cluster_has_gpus()
    gpus = ray_settings.num_gpus_per_replica
    if cuda and settings.engine.kind == "vllm":
        if gpus <= 0:
            raise SettingsError(
                "ray.num_gpus_per_replica (SAFEGUARD_RAY__NUM_GPUS_PER_REPLICA) is 0 on a cluster with GPUs: "
                f"each vLLM replica needs at least model.tensor_parallel_size={settings.model.tensor_parallel_size} "
                "GPU(s); set it to 1 (or the TP size)")
        gpus = max(gpus, float(settings.model.tensor_parallel_size))
    out: dict[str, Any] = {"num_cpus": ray_settings.num_cpus_per_replica, "num_gpus": gpus}
    if ray_settings.resources_per_replica:
        out["resources"] = dict(ray_settings.resources_per_replica)
    return out


def _cluster_has_gpus() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def label_chunks(
    settings: Settings,
    run_id: str,
    policies: Sequence[Policy],
    chunks: Sequence[int],
    *,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    attempt: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Label the given chunks on `ray.num_replicas` replicas; yields one result row per chunk as it finishes."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the runner draws one bar for the job, not one per operator
    ctx.enable_rich_progress_bars = False
    ctx.verbose_stats_logs = False
    # Start labelling once every replica has its engine: otherwise the first replica up takes the
    # first chunks and a slower node may get none. A replica that can never be placed fails the job
    # with Ray's "not enough resources" timeout instead of hanging for good.
    ctx.wait_for_min_actors_s = int(settings.ray.job_timeout_s)
    ds = ray.data.from_items([{"chunk_no": int(c)} for c in chunks], override_num_blocks=max(1, len(chunks)))
    with warnings.catch_warnings():
        # max_restarts/max_task_retries still go through `ray_remote_args` (deprecated in Ray 2.60
        # with no named replacement yet); Ray Data's own default would restart a replica forever.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated", category=DeprecationWarning)
        if cascade_stage.run_has_cascades(settings, policies):  # the cascade decides the clear items first
            ds = cascade_stage.add_stage(ds, settings, run_id, policies)
        ds = _map(ds, settings, run_id, policies, len(chunks), attempt)
    for row in ds.iter_rows():
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        if on_row is not None:
            on_row(row)
        yield row


def policy_shards(policies: Sequence[Policy], shards: int) -> list[list[Policy]]:
    """The policies split into `shards` shares of about equal policy text (longest first, each to the
    lightest share so far): a policy's text is the prefix its share's replica keeps cached."""
    out: list[list[Policy]] = [[] for _ in range(max(1, min(shards, len(policies))))]
    for policy in sorted(policies, key=lambda p: (-len(p.text), p.name)):
        min(out, key=lambda share: (sum(len(p.text) for p in share), len(share))).append(policy)
    return [sorted(share, key=lambda p: p.name) for share in out]


def stage_plan(settings: Settings, policies: Sequence[Policy], n_chunks: int) -> list[tuple[list[Policy], int]]:
    """(policies labelled, replicas) per replica stage: one stage with every policy, or with
    ray.policy_affinity one stage per share of the policies, the ray.num_replicas dealt out among them.
    A stage never has more replicas than the run has chunks."""
    replicas = settings.ray.num_replicas
    if not settings.ray.policy_affinity or replicas < 2 or len(policies) < 2:
        return [(list(policies), max(1, min(replicas, n_chunks)))]
    shares = policy_shards(policies, replicas)
    return [(share, max(1, min(n_chunks, replicas // len(shares) + (i < replicas % len(shares)))))
            for i, share in enumerate(shares)]


def _map(ds, settings: Settings, run_id: str, policies: Sequence[Policy], n_chunks: int, attempt: int | None = None):
    import ray.data

    stages = stage_plan(settings, policies, n_chunks)
    for i, (share, size) in enumerate(stages):
        ds = ds.map_batches(
            ChunkLabeller,
            # attempt: the label attempt's fencing token, carried by every chunk write (runs.start_label_attempt)
            fn_constructor_kwargs={"settings": settings, "run_id": run_id, "policies": list(policies), "attempt": attempt,
                                   "share": None if len(stages) == 1 else [p.name for p in share],
                                   "last": i == len(stages) - 1},
            batch_size=1,  # one chunk per call: a chunk is the unit that is staged atomically
            batch_format="pandas",
            compute=ray.data.ActorPoolStrategy(size=size, max_tasks_in_flight_per_actor=2),
            # A dead replica is restarted and its chunk retried (staged chunks are skipped on retry).
            max_restarts=settings.ray.max_restarts,
            max_task_retries=-1 if settings.ray.max_restarts != 0 else 0,
            **replica_resources(settings),
        )
    return ds


def progress_bar(total_chunks: int, run_id: str):
    """A tqdm bar in chunks (items and errors in its postfix); in a job log (no tty) it prints a line
    every 10 s instead of redrawing."""
    from tqdm import tqdm

    tty = sys.stderr.isatty()
    return tqdm(total=total_chunks, unit="chunk", desc=f"labelling {run_id}", file=sys.stderr,
                mininterval=0.5 if tty else 10.0, dynamic_ncols=tty, ascii=not tty)
