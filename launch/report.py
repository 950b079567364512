"""The report of a finished ``launch/train.py`` run, again: ``python launch/report.py RUN_DIR [--compare RUN ...]``."""

from xtc_ds.recipes.classification.report import main

if __name__ == "__main__":
    main()
