"""Confinement: Landlock, namespaces, seccomp filters, the files the dynamic loader needs."""
