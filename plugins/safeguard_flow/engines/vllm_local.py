"""In-process vLLM engine: one `vllm.LLM`, batched requests, prefix caching, structured outputs.

Requests arrive grouped by policy (labelling.label_items sorts them), so each policy's long system
prompt is computed once and then served from vLLM's prefix cache. vLLM is imported only here.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Sequence

from safeguard_flow.models import presets as model_presets
from safeguard_flow.domain import prompts
from safeguard_flow.domain.label_probability import TokenStep, label_probabilities
from safeguard_flow.domain.policies import OutputFormat
from safeguard_flow.engines.base import Completion, EngineDied, EngineError, LabelRequest
from safeguard_flow.engines.vllm_args import cpu_thread_env, engine_args
from safeguard_flow.domain.policies import Policy
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

TOP_LOGPROBS = 20  # when a policy's labels are not digit tokens: the top-k (vLLM's default max_logprobs)


@dataclass
class _Prepared:
    """A request made ready for vLLM, or the reason it cannot be sent."""

    index: int
    policy: Policy | None = None
    prompt: Any = None  # a TokensPrompt (harmony or chat template, rendered by prompts.py)
    params: Any = None  # vllm.SamplingParams
    prompt_tokens: int = 0
    error: str | None = None


class VLLMEngine:
    """Holds one `vllm.LLM`. Call `close()` (or use as a context manager) to free it."""

    def __init__(self, settings: Settings, *, model_path: str | None = None, **llm_overrides: Any):
        from safeguard_flow.models import local as local_model

        self.settings = settings
        m = settings.model
        self.model_name = m.name
        path = model_path or local_model.resolve_model(settings)
        self.model_path = path
        try:
            from vllm import LLM
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise EngineError(f"engine.kind=vllm needs vLLM installed (pip install 'safeguard-flow[cpu]' or "
                              f"'[gpu]'): {exc}") from None
        on_cpu = current_platform.is_cpu()
        self.resolved = model_presets.resolve(settings, on_cpu=on_cpu, model_path=path)
        self.harmony = self.resolved.harmony
        kwargs: dict[str, Any] = dict(model=path, **engine_args(settings, on_cpu=on_cpu, model_path=path))
        if on_cpu:
            # vLLM's CPU platform lets this variable override kv_cache_memory_bytes; the engine-core
            # process it spawns inherits it. Set from model.kv_cache_gib, so the setting always wins.
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(self.resolved.values["kv_cache_gib"])
            os.environ.update(cpu_thread_env(settings))
        kwargs.update(llm_overrides)
        self._max_model_len = kwargs["max_model_len"]
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - start-up failures are engine-wide, say what was asked
            raise EngineError(f"vLLM could not start model {path!r} (model.name={m.name!r}): "
                              f"{type(exc).__name__}: {exc}") from exc
        self.tokenizer = self.llm.get_tokenizer()

    # --- Engine protocol --------------------------------------------------------------------------

    def complete(self, requests: Sequence[LabelRequest]) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        ready: list[_Prepared] = []
        for i, req in enumerate(requests):
            prep = self._prepare(i, req)
            if prep.error is not None:
                results[i] = Completion(error=prep.error, prompt_tokens=prep.prompt_tokens)
            else:
                ready.append(prep)
        # One call for the whole (policy-grouped) batch: vLLM caches full blocks of the shared policy
        # prefix as soon as they are scheduled, so later requests of a group reuse them.
        if ready:
            for prep, out in zip(ready, self._run_with_fallback(ready)):
                results[prep.index] = out if isinstance(out, Completion) else self._to_completion(out, prep.policy)
        if self.harmony and ready:
            self._retry_cut_off(requests, ready, results)
        return [r if r is not None else Completion(error="engine returned no output") for r in results]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def _retry_cut_off(self, requests: Sequence[LabelRequest], ready: list[_Prepared],
                       results: list[Completion | None]) -> None:
        """A reasoning model that ran out of output budget gets one more try with a larger budget."""
        again: list[_Prepared] = []
        for prep in ready:
            first = results[prep.index]
            if first is None or first.error is not None or first.finish_reason != "length":
                continue
            budget = prep.params.max_tokens
            bigger = min(budget * self.resolved.retry_factor, self._max_model_len - prep.prompt_tokens)
            if bigger > budget:
                policy = requests[prep.index].policy
                again.append(_Prepared(prep.index, policy, prep.prompt, self.sampling_params(policy, bigger),
                                       prep.prompt_tokens))
        if not again:
            return
        log.info("%d request(s) hit their output budget; retrying once with a larger one", len(again))
        for prep, out in zip(again, self._run_with_fallback(again)):
            retried = out if isinstance(out, Completion) else self._to_completion(out, prep.policy)
            first = results[prep.index]
            assert first is not None
            retried.completion_tokens += first.completion_tokens  # both attempts were generated
            results[prep.index] = retried

    def reset_prefix_cache(self) -> None:
        """Drop vLLM's prefix cache (benchmarks use it to compare modes fairly)."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # noqa: BLE001 - best effort at teardown
            log.debug("vLLM shutdown: %s", exc)
        del llm
        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------------------

    def sampling_params(self, policy: Policy, max_tokens: int | None = None):
        return sampling_params(self.settings, policy, harmony=self.harmony, resolved=self.resolved,
                               max_tokens=max_tokens, label_token_ids=self.label_token_ids(policy))

    def label_token_ids(self, policy: Policy) -> list[int] | None:
        """The token ids that spell the policy's labels (logprobs are asked for exactly these), or None
        when a label does not tokenise to digit tokens (then the top-k logprobs are read instead)."""
        cache = self.__dict__.setdefault("_label_ids", {})
        if policy.labels not in cache:
            tokenizer = getattr(self, "tokenizer", None)
            cache[policy.labels] = digit_token_ids(tokenizer, policy.labels) if tokenizer is not None else None
        return cache[policy.labels]

    def _prepare(self, index: int, req: LabelRequest) -> _Prepared:
        """Render and measure the prompt; a prompt that cannot fit becomes an error, not a batch failure."""
        from vllm.inputs import TokensPrompt

        try:
            if self.harmony:
                ids = prompts.harmony_prompt_tokens(req.policy, req.content)
            else:
                ids = prompts.chat_prompt_tokens(self.tokenizer, req.policy, req.content)
        except Exception as exc:  # noqa: BLE001 - e.g. content the tokenizer or template rejects
            return _Prepared(index, error=f"could not render the prompt: {type(exc).__name__}: {exc}")
        n_tokens = len(ids)
        room = self._max_model_len - n_tokens
        if room < 1:
            return _Prepared(index, prompt_tokens=n_tokens, error=(
                f"prompt is {n_tokens} tokens, longer than model.max_model_len={self._max_model_len} "
                f"(lower model.max_content_chars or raise model.max_model_len)"))
        # Near the limit, ask for fewer tokens rather than fail: a short answer may still fit.
        max_tokens = min(self.resolved.max_tokens_for(req.policy.reasoning_effort.value), room)
        return _Prepared(index, req.policy, TokensPrompt(prompt_token_ids=ids),
                         self.sampling_params(req.policy, max_tokens), n_tokens)

    def _run(self, batch: list[_Prepared]) -> list[Any]:
        # Token ids on both paths: the prompt was tokenised by us, content as text (see prompts.py).
        return self.llm.generate([p.prompt for p in batch], [p.params for p in batch], use_tqdm=False)

    def _run_with_fallback(self, batch: list[_Prepared]) -> list[Any]:
        try:
            return self._run(batch)
        except Exception as exc:  # noqa: BLE001 - vLLM rejects a whole batch for one bad request
            self._raise_if_dead(exc)
            if len(batch) == 1:
                return [self._failed(batch[0], exc)]
            log.warning("batch of %d failed (%s: %s); retrying one request at a time",
                        len(batch), type(exc).__name__, exc)
            return [self._run_one(p) for p in batch]

    @staticmethod
    def _failed(prep: _Prepared, exc: Exception) -> Completion:
        return Completion(error=f"vLLM rejected the request: {type(exc).__name__}: {exc}",
                          prompt_tokens=prep.prompt_tokens)

    def _run_one(self, prep: _Prepared) -> Any:
        try:
            return self._run([prep])[0]
        except Exception as exc:  # noqa: BLE001 - this request alone fails; the others go on
            self._raise_if_dead(exc)
            return self._failed(prep, exc)

    def _raise_if_dead(self, exc: Exception) -> None:
        """EngineDied (the engine's reason) if `exc` killed the engine rather than rejected a request:
        vLLM says so (EngineDeadError, its engine core marked dead), or, with the engine core in this
        process, a one-token canary fails too. A dead engine answers nothing again: the caller restarts it."""
        reason = f"{type(exc).__name__}: {exc}"
        dead = any(type(e).__name__ == "EngineDeadError" for e in _chain(exc))
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        dead = dead or bool(getattr(getattr(core, "resources", None), "engine_dead", False))
        if not dead and type(core).__name__ == "InprocClient":
            from vllm import SamplingParams
            from vllm.inputs import TokensPrompt

            try:
                self.llm.generate([TokensPrompt(prompt_token_ids=[0])], SamplingParams(max_tokens=1), use_tqdm=False)
            except Exception as canary:  # noqa: BLE001 - any failure of a trivial request: the engine is gone
                dead = True
                reason += f" (then a one-token canary: {type(canary).__name__}: {canary})"
        if dead:
            log.error("the vLLM engine died: %s", reason)
            raise EngineDied(reason[:2000]) from exc

    def _to_completion(self, out: Any, policy: Policy | None = None) -> Completion:
        if not out.outputs:
            return Completion(error="vLLM returned no output for the request")
        gen = out.outputs[0]
        prompt_tokens = len(out.prompt_token_ids or [])
        completion_tokens = len(gen.token_ids or [])
        cached = out.num_cached_tokens or 0
        if self.harmony:
            final, analysis = prompts.parse_harmony_completion(list(gen.token_ids))
            text = final
        else:
            text, analysis = gen.text, None
        return Completion(
            text=text,
            analysis=analysis,
            finish_reason=gen.finish_reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cached_prompt_tokens=cached,
            label_probs=self._label_probs(gen, policy),
        )

    def _label_probs(self, gen: Any, policy: Policy | None) -> dict[int, float] | None:
        """Every generated token (analysis and harmony headers included) with its label-token logprobs."""
        if policy is None or not gen.logprobs or len(gen.logprobs) != len(gen.token_ids):
            return None
        steps = []
        for token_id, candidates in zip(gen.token_ids, gen.logprobs):
            own = candidates.get(token_id)
            text = own.decoded_token if own is not None and own.decoded_token is not None else \
                self.tokenizer.decode([token_id])
            steps.append(TokenStep(text, {lp.decoded_token: lp.logprob for lp in candidates.values()
                                          if lp.decoded_token is not None}))
        return label_probabilities(steps, policy.labels, json_answer=policy.output_format is not OutputFormat.BINARY,
                                   harmony=self.harmony, exhaustive=self.label_token_ids(policy) is not None)


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def digit_token_ids(tokenizer: Any, labels: tuple[int, ...]) -> list[int] | None:
    """The ids of the tokens that spell each label on its own (digits never merge with punctuation in
    the byte-level tokenizers we run), or None when one does not come out as digit tokens."""
    ids: list[int] = []
    for label in labels:
        tokens = tokenizer.encode(str(label), add_special_tokens=False)
        texts = [tokenizer.decode([t]) for t in tokens]
        if "".join(texts) != str(label) or not all(t.isdigit() for t in texts):
            return None
        ids += [t for t in tokens if t not in ids]
    return ids


def sampling_params(settings: Settings, policy: Policy, *, harmony: bool, max_tokens: int | None = None,
                    resolved: model_presets.ResolvedModel | None = None, label_token_ids: list[int] | None = None):
    """Per-request sampling params: the preset's (or settings') sampling, the answer constrained.

    Logprobs of the label tokens at every position (the top-k when their ids are unknown) measure the
    chosen label's probability. They are vLLM's raw logprobs: before temperature and logits processors
    (logit_bias), after the structured-output mask, which at the label's position allows exactly the
    labels, so the distribution there is the one over labels.

    Harmony: a structural tag constrains only the final channel (an optional free analysis message
    first), generation stops at harmony's stop tokens, and special tokens are kept so the completion
    can be split into channels. Chat models: the choice or JSON schema constrains the whole reply.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    resolved = resolved or model_presets.resolve(settings)
    v = resolved.values
    structured = None
    if settings.model.structured_outputs:
        if harmony:
            structured = StructuredOutputsParams(structural_tag=json.dumps(prompts.harmony_structural_tag(policy)))
        elif (choice := prompts.choices(policy)) is not None:
            structured = StructuredOutputsParams(choice=choice)
        else:
            structured = StructuredOutputsParams(json=prompts.json_schema(policy), disable_any_whitespace=True)
    extra: dict[str, Any] = {}
    if harmony:
        extra = {"stop_token_ids": prompts.harmony_stop_tokens(), "skip_special_tokens": False}
    return SamplingParams(
        temperature=v["temperature"],
        top_p=v["top_p"],
        max_tokens=max_tokens or resolved.max_tokens_for(policy.reasoning_effort.value),
        structured_outputs=structured,
        seed=0 if _per_request_seed(settings, resolved) else None,
        logprob_token_ids=label_token_ids or None,
        logprobs=None if label_token_ids else TOP_LOGPROBS,
        **extra,
    )


def _per_request_seed(settings: Settings, resolved: model_presets.ResolvedModel) -> bool:
    """A per-request seed makes a sampled answer independent of its batch, but on CPU it kills the engine:
    a seeded request whose prompt chunked prefill splits rewinds its torch generator's offset, which a
    CPU generator does not have (`RuntimeError: CPU Generator does not use offset`, then EngineDeadError).
    On CPU the engine-level seed (vllm_args: seed=0) keeps a run reproducible for the same batches
    instead; greedy presets (temperature 0) do not sample at all. model.request_seed overrides."""
    if settings.model.request_seed is not None:
        return settings.model.request_seed
    return not resolved.on_cpu
