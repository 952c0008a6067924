"""Training: penalties, annealing schedules, the SVI loop."""
