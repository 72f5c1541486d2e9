"""From an export: `svp generate` and `svp eval`."""
