"""Version 1 of the fleet wire messages; regenerate with ``make proto``."""
