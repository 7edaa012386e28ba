"""How the repository's checks end: one line per problem on stdout, a count on stderr."""
import sys


def report(problems, what):
    """Prints problems; returns the exit status (1 when there is any)."""
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} {what}", file=sys.stderr)
        return 1
    return 0
