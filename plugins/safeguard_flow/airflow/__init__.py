"""Airflow integration: the plugin, provider info, hooks, operators/tasks, assets and the UI view.

Only this subpackage (and the DAG files) import Airflow; the core library never does.
"""
