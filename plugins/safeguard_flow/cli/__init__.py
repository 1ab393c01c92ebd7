"""The `safeguard-flow` command: main.py builds the parser from one module per command group
(policies, label, evals, run, config, model, db, ray), each registering its own subcommands;
common.py holds what they share (settings, the warehouse engine's lifecycle, the log file)."""
