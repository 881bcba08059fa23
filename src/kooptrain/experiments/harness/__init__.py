"""What every experiment shares: tasks, optimizers, the timed step, the run plan with resume
and progress, JSON I/O, provenance and plotting defaults. Knows no experiment."""
