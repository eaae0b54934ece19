"""``python -m clearclip`` and the ``clearclip`` command: a start-up that Ctrl-C interrupts in one line."""

import sys


def run() -> None:
    try:
        from .io.threads import sleep_when_waiting

        sleep_when_waiting()  # before torch loads: waiting OpenMP threads sleep instead of spinning
        from .cli import main
    except KeyboardInterrupt:
        print("clearclip: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())


if __name__ == "__main__":
    run()
