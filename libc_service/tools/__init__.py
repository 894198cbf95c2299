"""The command-line tools: run, trace, learn, docs; observers and renderers."""
