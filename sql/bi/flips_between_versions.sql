-- What changes if BI switches policy 'spam' from version 1 to version 2: flips by direction.
-- same_content = 0 rows were edited in between, so their flip is not only the policy's doing.
SELECT old_label, new_label, old_status, new_status, same_content, COUNT(*) AS items
FROM sg_verdict_flips
WHERE policy = 'spam' AND old_version = 1 AND new_version = 2
GROUP BY old_label, new_label, old_status, new_status, same_content
ORDER BY items DESC
