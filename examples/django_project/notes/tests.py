"""The example's own tests, run by ``manage.py test`` against the cluster.

A write then a read in one test: under Django's test runner the router
sends everything to ``default`` (the test database, one connection, one
transaction per test), so a ``TestCase`` sees what it wrote.
"""

from __future__ import annotations

from django.test import TestCase, TransactionTestCase

from notes.models import Note


class WriteThenRead(TestCase):
    def test_a_write_is_read_back_in_the_same_test(self) -> None:
        Note.objects.create(text="hello")
        assert Note.objects.count() == 1
        assert Note.objects.get().text == "hello"


class WriteThenReadCommitted(TransactionTestCase):
    def test_a_committed_write_is_read_back(self) -> None:
        Note.objects.create(text="committed")
        assert list(Note.objects.values_list("text", flat=True)) == ["committed"]
