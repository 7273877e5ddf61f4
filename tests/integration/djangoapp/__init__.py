"""A minimal Django app for the router and middleware tests."""
