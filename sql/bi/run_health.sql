-- The latest labelling runs: what they covered, how many errors, tokens, and where they ended.
SELECT id, kind, status, interval_start, interval_end, items, unique_texts, skipped_unchanged, duplicate_ids,
       verdicts, errors, positives, inserted, updated,
       CAST(errors AS FLOAT) / NULLIF(verdicts, 0) AS error_rate,
       prompt_tokens, completion_tokens, model, created_at, published_at
FROM sg_runs
ORDER BY created_at DESC
LIMIT 50
