"""The `safeguard-flow` command, one module per command group: main.py assembles the parser from
the groups, each registering its own subcommands; common.py holds what they share."""
