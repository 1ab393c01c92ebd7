"""The domain: policies and their versions, the prompt contract, verdicts (parsing), content items.

Pure Python: no Airflow, Ray, vLLM or database. Everything else builds on these types.
"""
