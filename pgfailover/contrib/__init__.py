"""Framework integrations: Django, Flask and SQLAlchemy.

Each lives in its own module and imports its framework; the core package
never imports them. :mod:`pgfailover.contrib.causality` holds what they share:
building a manager from a config source, and read-your-writes routing.
"""
