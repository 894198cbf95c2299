"""The two ends of a slave's socket: the asyncio master and a blocking Python slave."""
