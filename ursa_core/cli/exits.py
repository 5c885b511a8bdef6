"""The exit codes of `ursa` (README, "What happens on bad input"): one home for the CLI's modules."""

EXIT_OUTPUT, EXIT_INPUT, EXIT_DOWNLOAD, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 3, 130, 143  # and 0: done
