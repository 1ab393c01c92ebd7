"""Labelling over any engine: the loop (checks, de-duplication, grouping by policy, parsing), one
chunk that a bad row cannot sink, and file input/output for the `label` command."""
