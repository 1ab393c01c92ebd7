"""Eval tests start the real vLLM engine (through the CLI) and release it when the command ends."""
