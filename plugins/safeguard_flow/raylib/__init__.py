"""Ray adapters, by concern: ``batch/`` (the label job: Ray Data replicas, one engine each),
``shipping/`` (what a job takes to a cluster), ``cluster/`` (the local head and this process's
session), ``serve/`` (the online OpenAI-compatible app).

Importing a module here is cheap where it can be: Ray, vLLM and the warehouse load only when a
function needs them.
"""
