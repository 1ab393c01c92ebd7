"""Human review of published verdicts (no Airflow, Ray or vLLM here).

- ``routing``: which published verdicts go to the review queue and why (doubtful confidence, error
  verdicts, flips between policy versions, cascade disagreement, disagreement with an earlier human
  decision, and a random audit sample with its sampling probability per item).
- ``queue``: the reviewer's side: lease the next item, decide or skip, the decision history.
- ``estimates``: model-vs-reviewer agreement and, from the audit sample alone (weighted by its
  sampling probabilities), precision, recall and prevalence in production with 95% intervals.
- ``exchange``: export to JSONL (an eval dataset), Label Studio tasks and Argilla records, and
  import of their annotations/responses as decisions.

Storage is warehouse/review_store.py; the page is airflow/review_ui.py; the CLI cli/review.py.
"""
