"""Command line entry point (placeholder until config lands)."""

def main(argv=None) -> int:
    return 0
