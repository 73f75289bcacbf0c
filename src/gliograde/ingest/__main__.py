"""``python -m gliograde.ingest SRC OUT model=RUN``: see :mod:`gliograde.ingest.command`."""

from gliograde.ingest.command import main

if __name__ == "__main__":
    main()
