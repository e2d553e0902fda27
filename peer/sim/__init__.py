"""The whole trading cluster in one process, on the simulated network and clock (`murmur sim`)."""
