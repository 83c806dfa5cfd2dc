"""Host integrations. Each module knows the FIPO maths and one host, nothing else."""
