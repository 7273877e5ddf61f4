"""A note."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    """One line of text."""

    text = models.CharField(max_length=200)
