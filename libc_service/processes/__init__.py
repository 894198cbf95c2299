"""Processes: start a program as a slave, serve each process of its tree, put the terminal back."""
