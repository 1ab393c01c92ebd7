-- Items that became violations under version 2 of 'spam' with unchanged text, with the new rationale.
SELECT source, content_id, old_label, new_label, new_category, new_rationale, new_labelled_at
FROM sg_verdict_flips
WHERE policy = 'spam' AND old_version = 1 AND new_version = 2
  AND same_content = 1 AND old_label = 0 AND new_label = 1
ORDER BY new_labelled_at DESC, content_id
